"""The probe: a walk whose answer states its end first, then the states that reach it.

  question: start at 7. add 4, take 2, add 9, take 5, add 3, take 6. where do you end?
  answer:   #### 10 path 11 9 18 13 16

Stating the end first means summing every step in one left-to-right pass; the path after it is
one addition per state, and the end is the last state plus the last step. A model that reads
its own first attempt can take the end from the attempt's path, so a second look can help
where a first look fails (RASR.md §12). Whether one pass really finds the end first hard is
measured, not assumed: `benchmarks/probe_premise.py` trains standard models on this format and
on the same answer with the end last (`path ... #### end`) and compares the end's accuracy.
"""

import random
import re

from .base import Example

STEPS = 6  # additions and subtractions per walk
_LIMIT = 99  # states stay in 0..99
_START = re.compile(r"start at (\d+)")
_MOVE = re.compile(r"(add|take) (\d+)")


def walk(seed: int, index: int) -> tuple[int, list[int]]:
  """(start, signed steps) of walk `index` of `seed`; every state stays in 0.._LIMIT."""
  rng = random.Random(f"probe:{seed}:{index}")
  state = rng.randint(0, 30)
  start, moves = state, []
  for _ in range(STEPS):
    ups = [d for d in range(1, 10) if state + d <= _LIMIT]
    downs = [-d for d in range(1, 10) if state - d >= 0]
    move = rng.choice(ups + downs)
    moves.append(move)
    state += move
  return start, moves


def format_answer(start: int, moves: list[int], end_first: bool = True) -> str:
  """`#### end path s1 .. s(n-1)` (end first), or `path s1 .. s(n-1) #### end`."""
  states, state = [], start
  for move in moves:
    state += move
    states.append(state)
  path = "path " + " ".join(map(str, states[:-1]))
  return f"#### {states[-1]} {path}" if end_first else f"{path} #### {states[-1]}"


def question(start: int, moves: list[int]) -> str:
  steps = ", ".join(f"add {m}" if m > 0 else f"take {-m}" for m in moves)
  return f"start at {start}. {steps}. where do you end?"


def make(seed: int, index: int, end_first: bool = True) -> Example:
  """The probe example number `index` of `seed` (`end_first=False`: the end stated last)."""
  start, moves = walk(seed, index)
  return Example("probe", f"probe-{seed}-{index}", question(start, moves),
                 format_answer(start, moves, end_first))


def quantities(text: str) -> list[str]:
  """The states a walk question's answer should state (every state after the start, in order,
  distinct): what a draft's relevance is measured against."""
  start = _START.search(text)
  if start is None:
    return []
  state, states = int(start.group(1)), []
  for verb, size in _MOVE.findall(text):
    state += int(size) if verb == "add" else -int(size)
    states.append(str(state))
  return list(dict.fromkeys(states))
