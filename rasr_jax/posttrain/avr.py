"""AvR Stage I data (`--mode=avr_data`): refinement trees from the model's own generator, scored,
and turned into RSFT records and preference pairs (design/EXTENSIONS.md, AvR).

For each prompt x the model writes y0; then `avr.critiques` critiques of y0, and for each
critique `avr.improvements` improvements (sampled at `avr.temperature`, top-p `avr.top_p`,
batched on device), every turn in the chat layout (data/chat.py):

  user: x | assistant: y0 | user: CRITIQUE_REQUEST | assistant: c_j | user: IMPROVE_REQUEST |
  assistant: y_jk

A reward r scores y0 and every improvement: the task checker (1 when the answer is right, else
0: the bundled tasks, or a prompts file with answers) or a user function (`avr.reward` =
"module:function", called as function(prompt, response) -> float). Refinement-aware rules:
- an improvement counts only when it raises the reward: r(y_jk) > r(y0) (the step and "no
  worse than y0" are one condition after one round);
- a critique is worth the mean reward of its improvements; the best trajectory is the best
  improvement under the best critique.
Outputs (in `avr.output`, default WORKDIR/avr): `rsft.jsonl` (the best trajectory as `messages`,
for trees whose best improvement counts), `pairs.jsonl` (conversational pairs with `type`
generation | criticism | improvement and both rewards), `trees.jsonl` (every tree) and
`summary.json`. Trees are built a chunk of prompts at a time, each chunk's trees written when
done: a killed run resumes at the first missing chunk.
"""

import dataclasses
import importlib
import json
import math
import os

import numpy as np
from absl import logging
from etils import epath

from rasr_jax import config as config_lib
from rasr_jax import progress, storage, tasks
from rasr_jax.data import chat, qa, sources
from rasr_jax.data.chat import Turn
from rasr_jax.data.sources import DataError

CRITIQUE_REQUEST = ("Review your answer: say what is wrong or missing in it, step by step. Do "
                    "not write a new answer yet.")
IMPROVE_REQUEST = "Write an improved answer, using the review."
PAIR_TYPES = ("generation", "criticism", "improvement")


@dataclasses.dataclass(frozen=True)
class Prompt:
  text: str
  answer: str | None  # the reference answer the checker reads, or None
  checker: str  # one of tasks.CHECKERS (used with an answer)


@dataclasses.dataclass(frozen=True)
class Tree:
  """One prompt's refinement tree and its rewards."""
  prompt: str
  y0: str
  reward0: float
  critiques: tuple[str, ...]  # [J]
  improvements: tuple[tuple[str, ...], ...]  # [J][K]
  rewards: tuple[tuple[float, ...], ...]  # [J][K]: r of each improvement

  def critique_worth(self) -> list:
    """Per critique: the mean reward of its improvements."""
    return [float(np.mean(r)) for r in self.rewards]

  def counts(self, j, k) -> bool:
    """Whether improvement k of critique j raises the reward over y0."""
    return self.rewards[j][k] > self.reward0

  def best(self) -> tuple:
    """(j, k): the best improvement under the best critique (the first of equals)."""
    j = int(np.argmax(self.critique_worth()))
    return j, int(np.argmax(self.rewards[j]))


def _turns(tree, j=None, k=None):
  """The conversation of `tree` through critique j and improvement k (None: not reached)."""
  turns = [Turn("user", tree.prompt), Turn("assistant", tree.y0)]
  if j is not None:
    turns += [Turn("user", CRITIQUE_REQUEST), Turn("assistant", tree.critiques[j])]
  if k is not None:
    turns += [Turn("user", IMPROVE_REQUEST), Turn("assistant", tree.improvements[j][k])]
  return turns


def _messages(turns):
  return [{"role": t.role, "content": t.content} for t in turns]


def _usable(*texts):
  """Whether every response has text (an empty one, `<eos>` at once, cannot be learned)."""
  return all(t.strip() for t in texts)


def rsft_record(tree):
  """The best trajectory as an SFT record, or None when its improvement does not count (or a
  response in it is empty)."""
  j, k = tree.best()
  if not tree.counts(j, k) or not _usable(tree.y0, tree.critiques[j], tree.improvements[j][k]):
    return None
  return {
      "messages": _messages(_turns(tree, j, k)),
      "reward0": tree.reward0,
      "reward": tree.rewards[j][k]
  }


def _pair(prompt_turns, chosen, rejected, pair_type, chosen_reward, rejected_reward):
  """A pair record, or None when a response is empty or both are the same text."""
  if chosen == rejected or not _usable(chosen, rejected, *(t.content for t in prompt_turns)):
    return None
  return {
      "prompt": _messages(prompt_turns),
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


def preference_pairs(tree) -> list:
  """The tree's pairs, all sharing their prefix: generation (the best improvement over y0,
  when it counts), criticism (the best critique over the worst, when worth more), improvement
  (the best over the worst improvement under the best critique, when it scores higher). Pairs
  with an empty text, or whose two responses are the same text, are left out."""
  pairs = []
  j, k = tree.best()
  best = tree.improvements[j][k]
  if tree.counts(j, k):
    pairs.append(
        _pair(_turns(tree)[:1], best, tree.y0, "generation", tree.rewards[j][k], tree.reward0))
  worth = tree.critique_worth()
  worst_j = int(np.argmin(worth))
  if worth[j] > worth[worst_j]:
    prompt = _turns(tree) + [Turn("user", CRITIQUE_REQUEST)]
    pairs.append(
        _pair(prompt, tree.critiques[j], tree.critiques[worst_j], "criticism", worth[j],
              worth[worst_j]))
  worst_k = int(np.argmin(tree.rewards[j]))
  if tree.rewards[j][k] > tree.rewards[j][worst_k]:
    prompt = _turns(tree, j) + [Turn("user", IMPROVE_REQUEST)]
    pairs.append(
        _pair(prompt, best, tree.improvements[j][worst_k], "improvement", tree.rewards[j][k],
              tree.rewards[j][worst_k]))
  return [p for p in pairs if p is not None]


def _distribution(values):
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


def summary(trees) -> dict:
  """Counts, reward distributions and the share of trees with an improvement that counts."""
  pairs = [p for tree in trees for p in preference_pairs(tree)]
  improved = [
      any(t.counts(j, k)
          for j in range(len(t.critiques))
          for k in range(len(t.rewards[j])))
      for t in trees
  ]
  return {
      "trees": len(trees),
      "rsft_records": sum(rsft_record(t) is not None for t in trees),
      "pairs": {
          kind: sum(p["type"] == kind for p in pairs) for kind in PAIR_TYPES
      },
      "trees_with_an_improvement": float(np.mean(improved)) if trees else 0.0,
      "reward_y0": _distribution([t.reward0 for t in trees]),
      "reward_improvements": _distribution([r for t in trees for row in t.rewards for r in row]),
  }


def load_reward(spec):
  """`avr.reward` "module:function" -> the function; ConfigError when it cannot be imported."""
  module_name, sep, name = spec.partition(":")
  if not sep or not module_name or not name:
    raise config_lib.ConfigError(f"config.avr.reward={spec!r}: expected module:function")
  try:
    function = getattr(importlib.import_module(module_name), name)
  except (ImportError, AttributeError) as e:
    raise config_lib.ConfigError(f"config.avr.reward={spec!r}: cannot import it ({e})") from None
  if not callable(function):
    raise config_lib.ConfigError(f"config.avr.reward={spec!r}: not a function")
  return function


class Reward:
  """r(prompt, response): the task checker (config.avr.reward empty) or the user's function."""

  def __init__(self, spec):
    self._spec = spec
    self._function = load_reward(spec) if spec else None

  def __call__(self, prompt: Prompt, response: str) -> float:
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
        if not cfg.reward and not isinstance(answer, str):
          raise DataError(f"{where}: the task checker (config.avr.reward empty) needs a string "
                          "field 'answer'")
        prompts.append(Prompt(record["prompt"], answer, config.data.qa_checker))
  return prompts[:cfg.num_prompts]


def _responses(model, token_lists, options, seed):
  return [r["text"] for r in model.generate_tokens(token_lists, options, seed=seed)]


def build_trees(model, prompts, reward, cfg, seed) -> list:
  """The refinement trees of `prompts` (model: an InferenceModel), three batched rounds."""
  tokenizer = model.tokenizer
  options = model.options(max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature,
                          top_p=cfg.top_p,
                          reflect="off")
  n, J, K = len(prompts), cfg.critiques, cfg.improvements

  def ids(turns):
    return chat.prompt_tokens(turns, False, tokenizer)

  y0 = _responses(model, [ids([Turn("user", p.text)]) for p in prompts], options, seed)
  base = [[Turn("user", p.text), Turn("assistant", y)] for p, y in zip(prompts, y0)]
  asks = [base[i] + [Turn("user", CRITIQUE_REQUEST)] for i in range(n) for _ in range(J)]
  critiques = _responses(model, [ids(t) for t in asks], options, seed + 1)  # [n J]
  improve = [
      asks[c] + [Turn("assistant", critiques[c]),
                 Turn("user", IMPROVE_REQUEST)] for c in range(n * J) for _ in range(K)
  ]
  improvements = _responses(model, [ids(t) for t in improve], options, seed + 2)  # [n J K]
  trees = []
  for i, prompt in enumerate(prompts):
    rows = [improvements[(i * J + j) * K:(i * J + j + 1) * K] for j in range(J)]
    trees.append(
        Tree(prompt.text, y0[i], reward(prompt, y0[i]), tuple(critiques[i * J:(i + 1) * J]),
             tuple(tuple(r) for r in rows),
             tuple(tuple(reward(prompt, y) for y in r) for r in rows)))
  return trees


def _tree_from_json(record):
  return Tree(record["prompt"], record["y0"], record["reward0"], tuple(record["critiques"]),
              tuple(tuple(r) for r in record["improvements"]),
              tuple(tuple(r) for r in record["rewards"]))


def _write_jsonl(path, records):
  storage.write_atomically(
      path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())


def build(config, workdir, checkpoint=None) -> dict:
  """Stage I data of the checkpoint in `workdir` into `avr.output`; returns the summary."""
  import jax  # after the start-up checks
  from jax.experimental import multihost_utils

  from rasr_jax.generation import inference
  cfg = config.avr
  reward = Reward(cfg.reward)
  prompts = load_prompts(config)
  if not prompts:
    raise DataError("avr_data: no prompts")
  reward(prompts[0], prompts[0].answer or "")  # a function that raises fails before any work
  output = cfg.output or os.path.join(workdir, "avr")
  parts = os.path.join(output, "trees")
  model = inference.InferenceModel(config, workdir, checkpoint)
  writer = jax.process_index() == 0  # every process builds the same trees
  identity = {
      "prompts": [dataclasses.asdict(p) for p in prompts],
      "avr": {
          k: v for k, v in dataclasses.asdict(cfg).items() if k != "output"
      },
      "seed": config.seed,
      "checkpoint_step": model.step,
      "tokenizer_sha256": model.tokenizer.checksum
  }
  meta = epath.Path(parts, "meta.json")
  if writer and (not meta.exists() or json.loads(meta.read_text()) != identity):
    storage.makedirs(parts)
    for stale in epath.Path(parts).glob("*.jsonl"):  # of other prompts, settings or model
      stale.unlink()
    storage.write_atomically(str(meta), json.dumps(identity).encode())
  starts = range(0, len(prompts), cfg.chunk_prompts)
  todo = [s for s in starts if not epath.Path(parts, f"{s:09d}.jsonl").exists()]
  if len(todo) < len(starts):
    logging.info("avr_data: %d of %d chunks of prompts already built",
                 len(starts) - len(todo), len(starts))
  for start in progress.track(todo, len(todo), "refinement trees", "chunks"):
    trees = build_trees(model, prompts[start:start + cfg.chunk_prompts], reward, cfg,
                        config.seed + 3 * start)
    if writer:
      _write_jsonl(os.path.join(parts, f"{start:09d}.jsonl"),
                   [dataclasses.asdict(t) for t in trees])
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("avr trees written")
  trees = [
      _tree_from_json(json.loads(line))
      for s in starts
      for line in epath.Path(parts, f"{s:09d}.jsonl").read_text().splitlines()
  ]
  result = dict(summary(trees), output=output)
  if writer:
    _write_jsonl(os.path.join(output, "trees.jsonl"), [dataclasses.asdict(t) for t in trees])
    _write_jsonl(os.path.join(output, "rsft.jsonl"), filter(None, map(rsft_record, trees)))
    _write_jsonl(os.path.join(output, "pairs.jsonl"),
                 [p for tree in trees for p in preference_pairs(tree)])
    storage.write_atomically(os.path.join(output, "summary.json"),
                             json.dumps(result, indent=2).encode())
  return result
