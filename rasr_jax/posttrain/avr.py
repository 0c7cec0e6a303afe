"""AvR (Alignment via Refinement; design/EXTENSIONS.md) data building: what its stages share.

Prompts (`avr.prompts_file`, else the bundled tasks' questions), the reward r(prompt, response)
(the task checker, or the user's `avr.reward` function), the two fixed requests of a
refinement conversation, sampling a batch of responses in the chat layout (data/chat.py), and
the records the stages write. The stages: avr_trees.py (Stage I), avr_search.py (Stage II);
the mode that runs them: avr_data.py.
"""

import dataclasses
import json
import math

import numpy as np

from rasr_jax import config as config_lib
from rasr_jax import storage, tasks
from rasr_jax.data import chat, qa, sources
from rasr_jax.data.sources import DataError

CRITIQUE_REQUEST = ("Review your answer: say what is wrong or missing in it, step by step. Do "
                    "not write a new answer yet.")
IMPROVE_REQUEST = "Write an improved answer, using the review."
CRITIC = "critic"  # avr.reward: the model's own RASR critic (self-reward)


def conversation(prompt, answers, critiques) -> list:
  """The refinement conversation (Turns): user x, assistant y0, then for each round the
  critique request, the critique, the improvement request and the improved answer
  (len(critiques) == len(answers) - 1)."""
  turns = [chat.Turn("user", prompt), chat.Turn("assistant", answers[0])]
  for critique, answer in zip(critiques, answers[1:], strict=True):
    turns = [*improve_request(critique_request(turns), critique), chat.Turn("assistant", answer)]
  return turns


def critique_request(turns) -> list:
  """`turns` (ending with an answer) followed by the request for a critique of that answer."""
  return [*turns, chat.Turn("user", CRITIQUE_REQUEST)]


def improve_request(asked, critique) -> list:
  """A critique request `asked`, the critique, then the request for an improved answer."""
  return [*asked, chat.Turn("assistant", critique), chat.Turn("user", IMPROVE_REQUEST)]


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A prompt to refine answers to, and what the checker scores them against."""
  text: str
  answer: str | None  # the reference answer the checker reads, or None
  checker: str  # one of tasks.CHECKERS (used with an answer)


class Reward:
  """r(prompt, response): the task checker (config.avr.reward empty), the model's own critic
  (`critic`: its weighted score of the response as a draft, which begins, as a reflection row's
  target does, with the newline that follows a question), or the user's function."""

  def __init__(self, spec, model=None):
    self._spec = spec
    self._model = model  # an InferenceModel, for the critic
    self._function = (config_lib.load_function("avr.reward", spec)
                      if spec and spec != CRITIC else None)
    if spec == CRITIC and model is not None and not model.config.reflect.enabled:
      raise config_lib.ConfigError("config.avr.reward=critic needs a model with reflection heads; "
                                   "this checkpoint's model has none")

  def __call__(self, prompt: Prompt, response: str) -> float:
    if self._spec == CRITIC:
      return self._model.critic_scores([prompt.text], [tasks.ANSWER_SEPARATOR + response])[0]
    if self._function is None:
      return float(tasks.answer_is_right(prompt.checker, prompt.answer, response))
    try:
      value = float(self._function(prompt.text, response))
    except Exception as e:  # the user's code: any failure is reported by name
      raise config_lib.ConfigError(f"config.avr.reward={self._spec!r}: raised "
                                   f"{type(e).__name__}: {e}") from None
    if not math.isfinite(value):
      raise config_lib.ConfigError(f"config.avr.reward={self._spec!r}: returned {value}")
    return value


def load_prompts(config) -> list:
  """`avr.prompts_file` (`prompt`, and `answer` when the checker scores), else the bundled
  tasks' questions; at most `avr.num_prompts`."""
  cfg = config.avr
  if not cfg.prompts_file:
    records = qa.load(dataclasses.replace(config.data, source="bundled", qa_files=""), config.seed)
    prompts = [Prompt(r.prompt, r.answer, r.checker) for r in records]
  else:
    prompts = []
    for path in sources.expand_globs(cfg.prompts_file, "avr.prompts_file", (".jsonl",)):
      for number, record in sources.jsonl_records(path, "avr.prompts_file file"):
        where = f"avr.prompts_file file {path} line {number}"
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
          raise DataError(f"{where}: expected an object with a string field 'prompt'")
        if not record["prompt"].strip():
          raise DataError(f"{where}: the prompt is empty")
        answer = record.get("answer")
        if not cfg.reward and not isinstance(answer, str):  # (critic and functions need none)
          raise DataError(f"{where}: the task checker (config.avr.reward empty) needs a string "
                          "field 'answer'")
        if not cfg.reward and tasks.read_answer(config.data.qa_checker, answer) is None:
          raise DataError(f"{where}: data.qa_checker={config.data.qa_checker} finds no answer in "
                          f"{answer!r}")
        prompts.append(Prompt(record["prompt"], answer, config.data.qa_checker))
  return prompts[:cfg.num_prompts]


def sample(model, conversations, cfg, seed) -> list:
  """One sampled response (text) per conversation (Turn lists ending in a user turn) from
  `model` (an InferenceModel) in the chat layout, at `avr.temperature` and `avr.top_p`."""
  options = model.options(max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature,
                          top_p=cfg.top_p,
                          reflect="off")
  prompts = [chat.prompt_tokens(turns, False, model.tokenizer) for turns in conversations]
  return [r["text"] for r in model.generate_tokens(prompts, options, seed=seed)]


def messages(turns):
  """Turns as a record's list of {"role", "content"}."""
  return [{"role": t.role, "content": t.content} for t in turns]


def usable(*texts):
  """Whether every text is non-empty (an empty response, `<eos>` at once, cannot be learned)."""
  return all(t.strip() for t in texts)


def pair(prompt_turns, chosen, rejected, pair_type, chosen_reward, rejected_reward):
  """A conversational preference record, or None when a text is empty or both responses are
  the same text."""
  if chosen == rejected or not usable(chosen, rejected, *(t.content for t in prompt_turns)):
    return None
  return {
      "prompt": messages(prompt_turns),
      "chosen": [{
          "role": "assistant",
          "content": chosen
      }],
      "rejected": [{
          "role": "assistant",
          "content": rejected
      }],
      "type": pair_type,
      "chosen_reward": chosen_reward,
      "rejected_reward": rejected_reward
  }


def distribution(values) -> dict:
  """Count, mean, min, max and quartiles of `values`."""
  values = np.asarray(values, np.float64)
  if not len(values):
    return {"count": 0}
  return {
      "count": int(len(values)),
      "mean": float(np.mean(values)),
      "min": float(np.min(values)),
      "max": float(np.max(values)),
      "quartiles": [float(q) for q in np.quantile(values, [0.25, 0.5, 0.75])]
  }


@dataclasses.dataclass(frozen=True)
class Rows:
  """The training rows the written records are for: SFT and DPO refuse a record longer than
  data.seq_len + 1 tokens, so the stages leave such records out (and count them)."""
  tokenizer: object
  max_tokens: int  # data.seq_len + 1

  def fits(self, record) -> bool:
    """Whether every dialogue of an SFT record or a preference pair fits a row."""
    if "chosen" in record:
      pair = chat.preference_pair(record, "an AvR pair")
      dialogues = (pair.chosen, pair.rejected)
    else:
      dialogues = (chat.sft_dialogue(record, "an AvR record"),)
    return all(len(chat.encode(d, self.tokenizer)[0]) <= self.max_tokens for d in dialogues)

  def keep(self, records) -> tuple[list, int]:
    """(the records that fit, how many did not)."""
    kept = [r for r in records if self.fits(r)]
    return kept, len(records) - len(kept)


def write_jsonl(path, records):
  """`records` (JSON-ready dicts) as a .jsonl file at `path`, written atomically."""
  storage.write_atomically(
      path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
