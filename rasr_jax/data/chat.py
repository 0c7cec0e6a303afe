"""Post-training records, and the one layout every post-training example is encoded in.

Records are `.jsonl` objects in the forms TRL's users have:
- conversational: `messages`, a list of {"role": "system" | "user" | "assistant", "content": str};
- prompt + completion: two strings (plain text: the completion continues the prompt), or two
  lists of messages (the prompt's turns, then the completion's assistant turns);
- preference pairs (DPO): `prompt` + `chosen` + `rejected` (strings, or lists of messages as
  above) and an optional `type` string.

The layout (tokens):
  start <|user|> "\\n" content "\\n" <|assistant|> "\\n" content <eos> <|user|> "\\n" ...
`start` is the tokenizer's first token of a prompt (`encode_prompt`'s); a role header is the role
marker (one piece of the project's tokenizers, text for others) and a newline; a turn that is
not the assistant's ends with a newline, an assistant turn with `<eos>`, where generation stops.
Plain text is start + prompt, then completion + `<eos>`. The responses (assistant turns, or the
completion) and their `<eos>` are what the loss counts: every assistant turn of `messages`, but
of a prompt + completion or a preference pair only the completion's (or the chosen / rejected
response's) turns, never assistant turns inside the prompt; a prompt for generation is the
layout of its turns followed by the assistant's header.

A tokenizer with its own chat template (an HF model's `tokenizer_config.json`) lays out
conversations with it instead, rendered by Jinja as transformers renders it; what the template
adds for each assistant turn (its content and end tag) is what the loss counts.
"""

import dataclasses
import functools

import numpy as np

from rasr_jax.data import sources
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.data.sources import DataError

ROLES = ("system", "user", "assistant")
ASSISTANT = "assistant"
PLAIN_PROMPT, PLAIN_RESPONSE = "user", "assistant"  # the roles plain text takes
ROLE_HEADERS = {role: f"{marker}\n" for role, marker in zip(ROLES, tok_lib.ROLE_MARKERS)}


@dataclasses.dataclass(frozen=True)
class Turn:
  role: str  # one of ROLES
  content: str


@dataclasses.dataclass(frozen=True)
class Dialogue:
  """Turns in order; the assistant's from `responses_from` on are the responses the model
  learns (those before it are context: a prompt's own assistant turns)."""
  turns: tuple[Turn, ...]
  plain: bool  # plain text: a prompt and its completion, without role headers
  origin: str = ""  # "file line N"
  responses_from: int = 0  # index of the first turn that counts as a response

  def counted(self, index) -> bool:
    """Whether turn `index` is a response the loss counts."""
    return index >= self.responses_from and self.turns[index].role == ASSISTANT


@dataclasses.dataclass(frozen=True)
class Example:
  """A dialogue encoded: tokens [n] int32 and loss_mask [n] bool (the response tokens)."""
  tokens: np.ndarray
  loss_mask: np.ndarray
  origin: str  # "file line N"


@dataclasses.dataclass(frozen=True)
class Pair:
  """A preference pair: one prompt, a chosen and a rejected response."""
  chosen: Dialogue
  rejected: Dialogue
  pair_type: str  # the record's `type`, "" when it has none
  origin: str  # "file line N"


def _messages(value, where, field):
  """A list of {"role", "content"} objects -> turns; DataError naming the message."""
  if not isinstance(value, list) or not value:
    raise DataError(f"{where}: field {field!r} must be a non-empty list of messages")
  turns = []
  for index, message in enumerate(value):
    if (not isinstance(message, dict) or message.get("role") not in ROLES
        or not isinstance(message.get("content"), str)):
      raise DataError(f"{where}: {field}[{index}] must be an object with a role among "
                      f"{', '.join(ROLES)} and a string content")
    if not message["content"].strip():
      raise DataError(f"{where}: {field}[{index}] ({message['role']}) has empty content")
    turns.append(Turn(message["role"], message["content"]))
  return tuple(turns)


def _response(value, where, field, conversational):
  """A completion / chosen / rejected field -> its turns, all the assistant's."""
  if not conversational:
    if not isinstance(value, str) or not value.strip():
      raise DataError(f"{where}: field {field!r} must be a non-empty string, as the prompt is")
    return (Turn(PLAIN_RESPONSE, value),)
  turns = _messages(value, where, field)
  if any(t.role != ASSISTANT for t in turns):
    raise DataError(f"{where}: field {field!r} may hold only assistant messages")
  return turns


def _prompt(record, where):
  """(prompt turns, conversational) of a record's `prompt` field."""
  value = record.get("prompt")
  if isinstance(value, str):
    if not value.strip():
      raise DataError(f"{where}: the prompt is empty")
    return (Turn(PLAIN_PROMPT, value),), False
  if isinstance(value, list):
    return _messages(value, where, "prompt"), True
  raise DataError(f"{where}: field 'prompt' is missing or neither a string nor a list of messages")


def sft_dialogue(record, where) -> Dialogue:
  """The dialogue of an SFT record (`messages`, or `prompt` + `completion`)."""
  if not isinstance(record, dict):
    raise DataError(f"{where}: expected an object")
  if "messages" in record:
    turns = _messages(record["messages"], where, "messages")
    if not any(t.role == ASSISTANT for t in turns):
      raise DataError(f"{where}: field 'messages' has no assistant message to learn")
    return Dialogue(turns, plain=False, origin=where)
  if "completion" not in record:
    raise DataError(f"{where}: expected field 'messages', or fields 'prompt' and 'completion'")
  prompt, conversational = _prompt(record, where)
  completion = _response(record["completion"], where, "completion", conversational)
  return Dialogue(prompt + completion,
                  plain=not conversational,
                  origin=where,
                  responses_from=len(prompt))


def preference_pair(record, where) -> Pair:
  """The pair of a DPO record (`prompt`, `chosen`, `rejected`, optional `type`)."""
  if not isinstance(record, dict):
    raise DataError(f"{where}: expected an object")
  for field in ("prompt", "chosen", "rejected"):
    if field not in record:
      raise DataError(f"{where}: field {field!r} is missing")
  prompt, conversational = _prompt(record, where)
  chosen = _response(record["chosen"], where, "chosen", conversational)
  rejected = _response(record["rejected"], where, "rejected", conversational)
  if chosen == rejected:
    raise DataError(f"{where}: the chosen and rejected responses are the same")
  pair_type = record.get("type", "")
  if not isinstance(pair_type, str):
    raise DataError(f"{where}: field 'type' must be a string")
  plain = not conversational
  return Pair(Dialogue(prompt + chosen, plain, where, len(prompt)),
              Dialogue(prompt + rejected, plain, where, len(prompt)), pair_type, where)


def read_records(patterns, field, parse):
  """[parse(record, "file line N")] over the `.jsonl` files that `patterns` (the comma-separated
  globs of config `field`) match."""
  parsed = []
  for path in sources.expand_globs(patterns, field, (".jsonl",)):
    for number, record in sources.jsonl_records(path, f"{field} file"):
      parsed.append(parse(record, f"{field} file {path} line {number}"))
  return parsed


@functools.lru_cache(maxsize=4)
def _compiled(template):
  """A Jinja chat template compiled as transformers does (sandboxed, trimmed blocks)."""
  import jinja2
  from jinja2 import sandbox

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(template)


def _render(tokenizer, turns, generation_prompt, where):
  messages = [{"role": t.role, "content": t.content} for t in turns]
  try:
    return _compiled(tokenizer.chat_template).render(messages=messages,
                                                     add_generation_prompt=generation_prompt,
                                                     **tokenizer.template_tokens)
  except Exception as e:  # jinja2 raises many kinds for a template that refuses a conversation
    raise DataError(f"{where}: the chat template of {tokenizer.path} fails ({e})") from None


def _template_segments(dialogue, tokenizer):
  """[(text, counted)]: `dialogue` as the tokenizer's chat template writes it, each response
  (what the template adds for it: content and end tag) counted."""
  segments, done = [], ""
  for index in range(len(dialogue.turns)):
    if not dialogue.counted(index):
      continue
    before = _render(tokenizer, dialogue.turns[:index], True, dialogue.origin)
    through = _render(tokenizer, dialogue.turns[:index + 1], False, dialogue.origin)
    if not (before.startswith(done) and through.startswith(before)):
      raise DataError(f"{dialogue.origin}: the chat template of {tokenizer.path} does not write "
                      "a conversation as its beginning plus what follows, so the responses "
                      "cannot be told apart")
    segments += [(before[len(done):], False), (through[len(before):], True)]
    done = through
  rest = _render(tokenizer, dialogue.turns, False, dialogue.origin)[len(done):]
  return segments + [(rest, False)]


def _project_segments(dialogue, tokenizer):
  """[(tokens, counted)] of `dialogue` in the project's layout."""
  segments = []
  for index, turn in enumerate(dialogue.turns):
    if not dialogue.plain:
      segments.append((tokenizer.encode(ROLE_HEADERS[turn.role]), False))
    segments.append((tokenizer.encode(turn.content), dialogue.counted(index)))
    if turn.role == ASSISTANT:  # its end, counted with the turn
      segments.append(([tokenizer.eos_id], dialogue.counted(index)))
    elif not dialogue.plain:
      segments.append((tokenizer.encode("\n"), False))
  return segments


def _templated(dialogue, tokenizer):
  return not dialogue.plain and tokenizer.chat_template is not None


def encode(dialogue: Dialogue, tokenizer):
  """(tokens [n] int32, loss_mask [n] bool) of `dialogue`: a conversation in the tokenizer's
  own chat template when it has one, else in the project's layout."""
  if _templated(dialogue, tokenizer):
    segments = [(tokenizer.encode(text), counted)
                for text, counted in _template_segments(dialogue, tokenizer)]
  else:
    segments = [([tokenizer.start_id], False), *_project_segments(dialogue, tokenizer)]
  ids = [i for tokens, _ in segments for i in tokens]
  mask = [counted for tokens, counted in segments for _ in tokens]
  return np.asarray(ids, np.int32), np.asarray(mask, bool)


def prompt_tokens(turns, plain, tokenizer) -> list[int]:
  """The tokens a model continues to answer `turns` (Turn tuple): their layout, then the
  assistant's header (none in plain text)."""
  dialogue = Dialogue(tuple(turns), plain, "a prompt")
  if _templated(dialogue, tokenizer):
    return tokenizer.encode(_render(tokenizer, dialogue.turns, True, dialogue.origin))
  tokens, _ = encode(dialogue, tokenizer)
  header = [] if plain else tokenizer.encode(ROLE_HEADERS[ASSISTANT])
  return [*tokens.tolist(), *header]


def encode_checked(dialogue: Dialogue, tokenizer, max_tokens) -> Example:
  """`encode`, refusing an example longer than `max_tokens` (data.seq_len + 1) by its origin."""
  tokens, loss_mask = encode(dialogue, tokenizer)
  if len(tokens) > max_tokens:
    raise DataError(f"{dialogue.origin}: {len(tokens)} tokens, more than data.seq_len + 1 = "
                    f"{max_tokens} (raise data.seq_len or shorten the example)")
  return Example(tokens, loss_mask, dialogue.origin)


# AvR Stage II's long answers: a refinement written out as one response, its final answer last.
DRAFT_SECTION = "### Draft\n"
CRITIQUE_SECTION = "\n### Critique\n"
IMPROVED_SECTION = "\n### Improved answer\n"
FINAL_SECTION = "\n### Final answer\n"


@dataclasses.dataclass(frozen=True)
class Refinement:
  """A refinement read from a long answer: the answers y0, y1, ... and the critiques between,
  and its final answer (None when the text stops before the final-answer marker)."""
  answers: tuple[str, ...]  # y0, y1, ...
  critiques: tuple[str, ...]
  final: str | None


def write_refinement(answers, critiques) -> str:
  """The long answer of a refinement: y0, then each critique and the answer it led to, then
  the last answer again as the final one (len(critiques) == len(answers) - 1)."""
  if len(critiques) != len(answers) - 1:
    raise ValueError(f"{len(answers)} answers need {len(answers) - 1} critiques, not "
                     f"{len(critiques)}")
  parts = [DRAFT_SECTION, answers[0]]
  for critique, answer in zip(critiques, answers[1:]):
    parts += [CRITIQUE_SECTION, critique, IMPROVED_SECTION, answer]
  return "".join(parts + [FINAL_SECTION, answers[-1]])


def long_answer_tokens(tokens_per_answer, rounds) -> int:
  """The tokens a long answer of `rounds` critique-improve rounds may take: y0, each round's
  critique and answer, the final answer, and their section markers."""
  return tokens_per_answer * (2 * rounds + 2) + 16 * (rounds + 1)


def final_answer(text) -> str | None:
  """The answer a long answer gives: the text after its final-answer marker; None without one."""
  return read_refinement(text).final


def read_refinement(text) -> Refinement:
  """The answers and critiques of a long answer, as far as its sections go (a model's text may
  stop anywhere), and the text after the first final-answer marker."""
  body, final_marker, final = text.partition(FINAL_SECTION.strip())
  if body.startswith(DRAFT_SECTION.strip()):
    body = body[len(DRAFT_SECTION.strip()):]
  answers, critiques = [], []
  first, *rounds = body.split(CRITIQUE_SECTION.strip())
  answers.append(first.strip("\n"))
  for part in rounds:
    critique, _, improved = part.partition(IMPROVED_SECTION.strip())
    critiques.append(critique.strip("\n"))
    answers.append(improved.strip("\n"))
  return Refinement(tuple(answers), tuple(critiques), final.strip("\n") if final_marker else None)
