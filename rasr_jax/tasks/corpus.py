"""Deterministic generation of task examples and the bundled pretraining mix."""

import functools
import random

from . import arithmetic, facts, filler, logic, probe, support
from .base import ALL_TASKS, Example

_MAKERS = {
    "arithmetic": arithmetic.make,
    "logic": logic.make,
    "facts": facts.make,
    "probe": probe.make,
    "support": support.make,
    "filler": filler.make,
}
DEFAULT_MIX = {
    "arithmetic": 0.2,
    "logic": 0.2,
    "facts": 0.2,
    "probe": 0.2,
    "support": 0.1,
    "filler": 0.1
}


def generate(task: str, seed: int, count: int) -> list[Example]:
  """`count` examples of `task`; example i depends only on (task, seed, i)."""
  if task not in _MAKERS:
    raise ValueError(f"unknown task {task!r}; expected one of {ALL_TASKS}")
  if count < 0:
    raise ValueError(f"count must be non-negative, got {count}")
  return [_MAKERS[task](seed, i) for i in range(count)]


def _split(total: int, mix: dict[str, float]) -> dict[str, int]:
  """Largest-remainder split of `total` by the weights of `mix` (ties go to earlier keys)."""
  weight_sum = sum(mix.values())
  shares = {task: total * weight / weight_sum for task, weight in mix.items()}
  counts = {task: int(share) for task, share in shares.items()}
  by_remainder = sorted(mix, key=lambda task: counts[task] - shares[task])
  for task in by_remainder[:total - sum(counts.values())]:
    counts[task] += 1
  return counts


def bundled_corpus(seed: int,
                   num_examples: int,
                   mix: dict[str, float] | None = None) -> list[Example]:
  """`num_examples` examples mixed by `mix` (default DEFAULT_MIX; weights need not sum to 1),
  shuffled."""
  mix = DEFAULT_MIX if mix is None else mix
  unknown = set(mix) - set(ALL_TASKS)
  if unknown:
    raise ValueError(f"unknown task(s) {sorted(unknown)} in mix; expected some of {ALL_TASKS}")
  if any(weight < 0 for weight in mix.values()) or sum(mix.values()) <= 0:
    raise ValueError(f"mix weights must be non-negative with a positive sum, got {mix}")
  if num_examples < 0:
    raise ValueError(f"num_examples must be non-negative, got {num_examples}")
  return list(_mixed(seed, num_examples, tuple(mix.items())))


@functools.lru_cache(maxsize=4)  # the corpus, the reflection rows and evaluation read one mix
def _mixed(seed: int, num_examples: int, mix: tuple[tuple[str, float], ...]) -> tuple[Example]:
  counts = _split(num_examples, dict(mix))
  examples = [ex for task, n in counts.items() for ex in generate(task, seed, n)]
  random.Random(f"corpus:{seed}").shuffle(examples)
  return tuple(examples)
