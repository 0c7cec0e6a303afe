"""AvR Stage I (`--mode=avr_data --config.avr.stage=trees`): refinement trees, scored, turned
into RSFT records and preference pairs.

For each prompt x the model writes y0; then `avr.critiques` critiques of y0, and for each
critique `avr.improvements` improvements (sampled at `avr.temperature`, top-p `avr.top_p`,
batched on device), every turn in the chat layout:

  user: x | assistant: y0 | user: CRITIQUE_REQUEST | assistant: c_j | user: IMPROVE_REQUEST |
  assistant: y_jk

The reward (avr.py) scores y0 and every improvement. Refinement-aware rules:
- an improvement counts only when it raises the reward: r(y_jk) > r(y0) (the step and "no
  worse than y0" are one condition after one round);
- a critique is worth the mean reward of its improvements; the best trajectory is the best
  improvement under the best critique.
Outputs: `rsft.jsonl` (the best trajectory as `messages`, for trees whose best improvement
counts), `pairs.jsonl` (conversational pairs with `type` generation | criticism | improvement
and both rewards), `trees.jsonl` (every tree) and `summary.json`.
"""

import dataclasses
import os

import numpy as np

from rasr_jax.data.chat import Turn
from rasr_jax.posttrain import avr

PAIR_TYPES = ("generation", "criticism", "improvement")


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
  """The conversation of `tree` through improvement k of critique j (None: y0 alone)."""
  if j is None:
    return avr.conversation(tree.prompt, (tree.y0,), ())
  return avr.conversation(tree.prompt, (tree.y0, tree.improvements[j][k]), (tree.critiques[j],))


def rsft_record(tree):
  """The best trajectory as an SFT record, or None when its improvement does not count (or a
  response in it is empty)."""
  j, k = tree.best()
  if not tree.counts(j, k) or not avr.usable(tree.y0, tree.critiques[j], tree.improvements[j][k]):
    return None
  return {
      "messages": avr.messages(_turns(tree, j, k)),
      "reward0": tree.reward0,
      "reward": tree.rewards[j][k]
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
        avr.pair(_turns(tree)[:1], best, tree.y0, "generation", tree.rewards[j][k], tree.reward0))
  worth = tree.critique_worth()
  worst_j = int(np.argmin(worth))
  if worth[j] > worth[worst_j]:
    prompt = avr.critique_request(_turns(tree))
    pairs.append(
        avr.pair(prompt, tree.critiques[j], tree.critiques[worst_j], "criticism", worth[j],
                 worth[worst_j]))
  worst_k = int(np.argmin(tree.rewards[j]))
  if tree.rewards[j][k] > tree.rewards[j][worst_k]:
    prompt = avr.improve_request(avr.critique_request(_turns(tree)), tree.critiques[j])
    pairs.append(
        avr.pair(prompt, best, tree.improvements[j][worst_k], "improvement", tree.rewards[j][k],
                 tree.rewards[j][worst_k]))
  return [p for p in pairs if p is not None]


def summary(trees, rsft, pairs) -> dict:
  """Counts (of the `rsft` records and `pairs` written), reward distributions and the share of
  trees with an improvement that counts."""
  improved = [
      any(t.counts(j, k)
          for j in range(len(t.critiques))
          for k in range(len(t.rewards[j])))
      for t in trees
  ]
  return {
      "trees": len(trees),
      "rsft_records": len(rsft),
      "pairs": {
          kind: sum(p["type"] == kind for p in pairs) for kind in PAIR_TYPES
      },
      "trees_with_an_improvement": float(np.mean(improved)) if trees else 0.0,
      "reward_y0": avr.distribution([t.reward0 for t in trees]),
      "reward_improvements": avr.distribution([r for t in trees for row in t.rewards for r in row]),
  }


def build_trees(model, prompts, reward, cfg, seed) -> list:
  """The refinement trees of `prompts` (model: an InferenceModel), three batched rounds."""
  n, J, K = len(prompts), cfg.critiques, cfg.improvements
  y0 = avr.sample(model, [[Turn("user", p.text)] for p in prompts], cfg, seed)
  asks = [
      avr.critique_request(avr.conversation(p.text, (y,), ()))
      for p, y in zip(prompts, y0)
      for _ in range(J)
  ]
  critiques = avr.sample(model, asks, cfg, seed + 1)  # [n J]
  improve = [avr.improve_request(asks[c], critiques[c]) for c in range(n * J) for _ in range(K)]
  improvements = avr.sample(model, improve, cfg, seed + 2)  # [n J K]
  trees = []
  for i, prompt in enumerate(prompts):
    rows = [improvements[(i * J + j) * K:(i * J + j + 1) * K] for j in range(J)]
    trees.append(
        Tree(prompt.text, y0[i], reward(prompt, y0[i]), tuple(critiques[i * J:(i + 1) * J]),
             tuple(tuple(r) for r in rows),
             tuple(tuple(reward(prompt, y) for y in r) for r in rows)))
  return trees


def build_chunk(model, prompts, reward, cfg, seed) -> list:
  """The trees of `prompts` as JSON records."""
  return [dataclasses.asdict(t) for t in build_trees(model, prompts, reward, cfg, seed)]


def from_record(record) -> Tree:
  return Tree(record["prompt"], record["y0"], record["reward0"], tuple(record["critiques"]),
              tuple(tuple(r) for r in record["improvements"]),
              tuple(tuple(r) for r in record["rewards"]))


def write_outputs(records, output, rows: avr.Rows) -> dict:
  """trees.jsonl, rsft.jsonl and pairs.jsonl of every tree (JSON records; those too long for
  `rows` left out); returns the summary, with the count left out under `too_long`."""
  trees = [from_record(r) for r in records]
  rsft, rsft_too_long = rows.keep([r for r in map(rsft_record, trees) if r is not None])
  pairs, pairs_too_long = rows.keep([p for tree in trees for p in preference_pairs(tree)])
  avr.write_jsonl(os.path.join(output, "trees.jsonl"), records)
  avr.write_jsonl(os.path.join(output, "rsft.jsonl"), rsft)
  avr.write_jsonl(os.path.join(output, "pairs.jsonl"), pairs)
  return dict(summary(trees, rsft, pairs),
              too_long={
                  "rsft": rsft_too_long,
                  "pairs": pairs_too_long
              })
