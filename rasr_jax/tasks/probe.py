"""The probe: add two 3-digit numbers; the answer states the sum first, then the column steps
that reach it, least significant column first.

  question: what is 347 + 589?
  answer:   #### 936 steps 7+9+0=16 4+8+1=13 3+5+1=09

Stating the sum first means resolving every carry, most significant digit first, before any is
written: one left-to-right pass must chain the columns' carries. Each step after it is a
one-digit sum of two digits read from the question and the carry written in the step before,
and the sum is read off the steps (the last step's two digits, then the units of the others,
last to first). A model that reads its own first attempt can take the sum from the attempt's
steps, so a second look can help where a first look fails (RASR.md §12). The steps are not the
sum's digits in another order: a draft with the wrong sum can still hold the right steps.
Whether one pass really finds the sum first hard is measured, not assumed:
`benchmarks/probe_premise.py` trains standard models on this format and on the same answer with
the sum last (`steps 7+9+0=16 4+8+1=13 3+5+1=09 #### 936`) and compares the sum's accuracy.
"""

import random
import re
from typing import NamedTuple

from .base import Example

DIGITS = 3  # operands from 10**(DIGITS-1) to 10**DIGITS - 1
_OPERANDS = re.compile(r"what is (\d+) \+ (\d+)\?")


class Column(NamedTuple):
  """One column of the written addition: its two digits, the carry in, and their sum (0..19)."""
  top: int
  bottom: int
  carry: int
  total: int

  def text(self) -> str:
    return f"{self.top}+{self.bottom}+{self.carry}={self.total:02d}"


def operands(seed: int, index: int) -> tuple[int, int]:
  """The two numbers of probe example `index` of `seed`."""
  rng = random.Random(f"probe:{seed}:{index}")
  low, high = 10**(DIGITS - 1), 10**DIGITS - 1
  return rng.randint(low, high), rng.randint(low, high)


def columns(a: int, b: int) -> list[Column]:
  """The columns of a + b, least significant first."""
  out, carry = [], 0
  for place in range(DIGITS):
    top, bottom = a // 10**place % 10, b // 10**place % 10
    out.append(Column(top, bottom, carry, top + bottom + carry))
    carry = out[-1].total // 10
  return out


def format_answer(a: int, b: int, sum_first: bool = True) -> str:
  """`#### sum steps c1 .. c3` (sum first), or `steps c1 .. c3 #### sum`."""
  steps = "steps " + " ".join(column.text() for column in columns(a, b))
  return f"#### {a + b} {steps}" if sum_first else f"{steps} #### {a + b}"


def question(a: int, b: int) -> str:
  return f"what is {a} + {b}?"


def make(seed: int, index: int, sum_first: bool = True) -> Example:
  """The probe example number `index` of `seed` (`sum_first=False`: the sum stated last)."""
  a, b = operands(seed, index)
  return Example("probe", f"probe-{seed}-{index}", question(a, b), format_answer(a, b, sum_first))


def read_steps(text: str) -> list[str]:
  """The steps a probe answer or draft writes after `steps` (up to a `####`), as strings."""
  after = text.split("steps", 1)[1] if "steps" in text else ""
  return after.split("####", 1)[0].split()


def quantities(text: str) -> list[str]:
  """The numbers a probe question's answer should state (the sum, then each column's total, as
  `final_answer` drafts are read: without leading zeros): what a draft's relevance is measured
  against."""
  found = _OPERANDS.search(text)
  if found is None:
    return []
  a, b = int(found.group(1)), int(found.group(2))
  return list(dict.fromkeys(str(n) for n in [a + b, *(c.total for c in columns(a, b))]))
