"""The inference methods of the source's Table 1, on one checkpoint.

  standard     the draft y(0) alone (reflection off)
  cot          the draft alone, after a prompt of worked examples (the task builds that prompt)
  self_refine  Self-Refine: the model writes feedback on its own answer, stops when the feedback
               says the answer is correct, else writes an improved answer with the whole history
               in its prompt; at most SELF_REFINE_ROUNDS rounds
  constitutional
               Constitutional AI's critique-revision loop: `constitutional.rounds` rounds, each a
               critique of the latest answer by one principle of `constitutional.principles_file`
               (the item's index plus the round picks it), then a revised answer written with
               the whole history in its prompt; the answer is the last revision
  chat         the draft alone, the question asked in the chat layout (data/chat.py): for models
               fine-tuned on conversations (SFT, AvR Stage I)
  avr          an AvR Stage II model: asked in the chat layout, it writes one long answer (its
               drafts, critiques and improvements, data/chat.py); the answer is the text after
               its final-answer marker, and the drafts are the answers it wrote on the way
  rasr         critic and controller: every draft y(0..R) is decoded (`fixed`), and the answer is
               the draft at which the learned controller stops (R > tau), exactly the answer
               `reflect=learned` returns; decoding all R drafts lets the report show y(k) for
               every k. A model trained without learned stopping answers with y(R).

Every method returns one `Answer` per prompt with its drafts, so one report covers them all.
"""

import dataclasses
import itertools
import os
import re

import numpy as np
from etils import epath

from rasr_jax.data import chat
from rasr_jax.data.sources import DataError

METHODS = ("standard", "cot", "self_refine", "constitutional", "chat", "avr", "rasr")
SELF_REFINE_ROUNDS = 4
SELF_REFINE_FEEDBACK = "\nfeedback on the answer:"
SELF_REFINE_IMPROVED = "\nimproved answer:"
FEEDBACK_TOKENS = 32
SEED_STRIDE = 1_000_003  # the seeds of a method's successive generation rounds are this apart
CONSTITUTIONAL_CRITIQUE_START = "\ncritique by the principle"
CONSTITUTIONAL_CRITIQUE = CONSTITUTIONAL_CRITIQUE_START + ' "{}":'
CONSTITUTIONAL_REVISION = "\nrevised answer:"
DEFAULT_PRINCIPLES = os.path.join(os.path.dirname(__file__), "principles.txt")
_SAYS_CORRECT = re.compile(r"\bcorrect\b", re.IGNORECASE)  # "incorrect" does not match
_SAYS_NOT_CORRECT = re.compile(r"\bnot\s+correct\b", re.IGNORECASE)


@dataclasses.dataclass
class Answer:
  """One prompt's answer: its drafts (rounds), which one is given, and what it cost."""
  drafts: list  # texts y(0), y(1), ... (Self-Refine: the answer of each round)
  stop: int  # index into drafts of the answer the method gives
  generated_tokens: int  # every token decoded for this answer (feedback included)
  confidence: list | None = None  # the critic's `factual` score of each draft (RASR)
  disagreement: list | None = None  # a critic committee's disagreement on each draft (RASR)
  # {critic dimension: its score of each draft} (RASR)
  dimension_scores: dict | None = None
  feedback: list = dataclasses.field(default_factory=list)  # Self-Refine's feedback texts
  # Per draft: its prompt ended in `answer:` (Self-Refine's improved answers), so the answer the
  # draft starts with is its answer.
  after_answer_prompt: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if not self.after_answer_prompt:  # drafts of the question itself
      self.after_answer_prompt = [False] * len(self.drafts)

  @property
  def final(self):
    return self.drafts[self.stop]


def says_correct(feedback):
  """Self-Refine's stopping rule: the feedback calls the answer correct (and not 'not
  correct'; 'incorrect' is another word)."""
  return bool(_SAYS_CORRECT.search(feedback)) and not _SAYS_NOT_CORRECT.search(feedback)


def answer(model,
           prompts,
           method,
           *,
           max_new_tokens,
           stop=(),
           temperature=0.0,
           seed=0,
           batch_size=8,
           context_len=None):
  """One Answer per prompt from `model` (an InferenceModel) by `method`. `context_len` (the
  longest sequence the model reads, e.g. lm-eval's max_length): a prompt keeps its last
  context_len - new tokens, so the answer fits; `rasr` keeps the last P tokens (generation's
  default with reflection on, what training's rows hold)."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  calls = itertools.count()  # each generation round samples with keys of its own

  def run(texts, reflect, tokens, stops, token_ids=None):
    """Generation records of `texts` (or of their `token_ids`, laid out by the caller)."""
    options = model.options(max_new_tokens=tokens,
                            temperature=temperature,
                            stop=tuple(stops),
                            reflect=reflect)
    kept = None if reflect != "off" or context_len is None else max(context_len - tokens, 1)
    settings = dict(seed=seed + SEED_STRIDE * next(calls),
                    batch_size=batch_size,
                    max_prompt_tokens=kept)
    if token_ids is None:
      return model.generate(texts, options, **settings)
    return model.generate_tokens(token_ids, options, labels=list(texts), **settings)

  if method == "rasr":
    return [_rasr_answer(r, model) for r in run(prompts, "fixed", max_new_tokens, stop)]
  if method in ("chat", "avr"):
    tokens = max_new_tokens if method == "chat" else chat.long_answer_tokens(
        max_new_tokens, model.config.avr.search_rounds)
    asked = [chat.prompt_tokens([chat.Turn("user", p)], False, model.tokenizer) for p in prompts]
    records = run(prompts, "off", tokens, stop, token_ids=asked)
    if method == "chat":
      return [Answer([r["text"]], 0, r["num_tokens"]) for r in records]
    return [_avr_answer(r) for r in records]
  drafts = run(prompts, "off", max_new_tokens, stop)
  answers = [Answer([r["text"]], 0, r["num_tokens"]) for r in drafts]
  if method == "self_refine":
    _self_refine(answers, list(prompts), run, max_new_tokens, stop)
  if method == "constitutional":
    cfg = model.config.constitutional
    _constitutional(answers, list(prompts), run, max_new_tokens, stop,
                    load_principles(cfg.principles_file), cfg.rounds)
  return answers


def load_principles(path=""):
  """The principles of `path` (default the shipped principles.txt): its lines, less blank ones
  and # comments; DataError when there is none."""
  path = path or DEFAULT_PRINCIPLES
  if not epath.Path(path).is_file():
    raise DataError(f"constitutional.principles_file {path}: not found")
  lines = [line.strip() for line in epath.Path(path).read_text().splitlines()]
  principles = [line for line in lines if line and not line.startswith("#")]
  if not principles:
    raise DataError(f"constitutional.principles_file {path}: no principle in it")
  return principles


def _avr_answer(record):
  refinement = chat.read_refinement(record["text"])
  # the answers written on the way, then the final one: none (scored wrong) without the marker
  drafts = [*refinement.answers, refinement.final or ""]
  return Answer(drafts, len(drafts) - 1, record["num_tokens"], feedback=list(refinement.critiques))


def learned_stop(stop_probs, tau, iterations):
  """The draft the controller keeps: the first k whose stop probability exceeds tau, else R."""
  return next((k for k, p in enumerate(stop_probs) if p > tau), iterations)


def _rasr_answer(record, model):
  reflect = model.config.reflect
  iterations = len(record["drafts"]) - 1
  stop = (learned_stop(record["stop_probs"], float(model.tau), iterations)
          if reflect.learned_stopping else iterations)
  factual = (reflect.dim_names.index("factual") if "factual" in reflect.dim_names else None)
  confidence = ([s[factual] for s in record["scores"]]
                if factual is not None else [float(np.mean(s)) for s in record["scores"]])
  return Answer(
      record["drafts"],
      stop,
      sum(record["draft_tokens"][:stop + 1]),
      confidence,
      disagreement=record.get("disagreement"),
      dimension_scores={
          name: [s[index] for s in record["scores"]] for index, name in enumerate(reflect.dim_names)
      })


def _constitutional(answers, prompts, run, max_new_tokens, stop, principles, rounds):
  """Critique-revision rounds, in place: every answer is revised `rounds` times."""
  histories = [f"{p} {a.final}" for p, a in zip(prompts, answers)]
  for round_index in range(rounds):
    asks = [
        history + CONSTITUTIONAL_CRITIQUE.format(principles[(i + round_index) % len(principles)])
        for i, history in enumerate(histories)
    ]
    critiques = run(asks, "off", FEEDBACK_TOKENS, (*stop, CONSTITUTIONAL_REVISION.strip()))
    asks = [f"{ask} {c['text']}{CONSTITUTIONAL_REVISION}" for ask, c in zip(asks, critiques)]
    revised = run(asks, "off", max_new_tokens, (*stop, CONSTITUTIONAL_CRITIQUE_START.strip()))
    for i, (ask, critique, record) in enumerate(zip(asks, critiques, revised)):
      answers[i].feedback.append(critique["text"])
      answers[i].drafts.append(record["text"])
      answers[i].after_answer_prompt.append(True)
      answers[i].stop = len(answers[i].drafts) - 1
      answers[i].generated_tokens += critique["num_tokens"] + record["num_tokens"]
      histories[i] = f"{ask} {record['text']}"


def _self_refine(answers, prompts, run, max_new_tokens, stop):
  """Feedback / improve rounds, in place, over the prompts whose answer is not yet accepted."""
  histories = [f"{p} {a.final}" for p, a in zip(prompts, answers)]
  active = list(range(len(answers)))
  for _ in range(SELF_REFINE_ROUNDS):
    if not active:
      break
    asks = [histories[i] + SELF_REFINE_FEEDBACK for i in active]
    feedback = run(asks, "off", FEEDBACK_TOKENS, (*stop, SELF_REFINE_IMPROVED.strip()))
    still = []
    for i, ask, record in zip(active, asks, feedback):
      answers[i].feedback.append(record["text"])
      answers[i].generated_tokens += record["num_tokens"]
      histories[i] = f"{ask} {record['text']}"
      if not says_correct(record["text"]):
        still.append(i)
    if not still:
      break
    asks = [histories[i] + SELF_REFINE_IMPROVED for i in still]
    improved = run(asks, "off", max_new_tokens, (*stop, SELF_REFINE_FEEDBACK.strip()))
    for i, ask, record in zip(still, asks, improved):
      answers[i].drafts.append(record["text"])
      answers[i].after_answer_prompt.append(True)
      answers[i].stop = len(answers[i].drafts) - 1
      answers[i].generated_tokens += record["num_tokens"]
      histories[i] = f"{ask} {record['text']}"
    active = still
