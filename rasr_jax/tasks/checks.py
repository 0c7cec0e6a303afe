"""Scoring a free-form draft against a verifiable example."""

import re

from . import arithmetic, facts, logic
from .base import TASKS, CheckResult, Example

_HASH_ANSWER = re.compile(r"####\s*(-?\d[\d,]*)")
_LETTER_ANSWER = re.compile(r"answer\s*:\s*\(?([a-d])\b", re.I)
_BOOL_ANSWER = re.compile(r"answer\s*:\s*(true|false)\b", re.I)
# The answer a draft starts with, for a draft that continues a prompt ending in `answer:`.
_LEADING_ANSWER = {
    "arithmetic": re.compile(r"\s*(?:####\s*)?(-?\d[\d,]*)"),
    "logic": re.compile(r"\s*\(?([a-d])\b", re.I),
    "facts": re.compile(r"\s*(true|false)\b", re.I),
}
# A run of integers joined by + - *, optionally followed by `= r`; a step is a run with an
# operator and a result. Matching every run (not only those before "=") keeps the scan linear in
# the draft length.
_CHAIN = re.compile(
    r"(?<![\d.])(\d{1,12}(?:\s*[-+*]\s*\d{1,12})*)(?:\s*=\s*(-?\d{1,12})(?!\d|\.\d))?")
_TOKEN = re.compile(r"\d+|[-+*]")
_WORD = re.compile(r"[a-z0-9]+")
_QUANTITIES = {
    "arithmetic": arithmetic.quantities,
    "logic": logic.quantities,
    "facts": facts.quantities,
}


def _require_verifiable(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"task {task!r} has no checkable answer; expected one of {TASKS}")


def _normalize_number(text: str) -> str:
  sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
  digits = digits.replace(",", "").lstrip("0") or "0"
  return digits if digits == "0" else sign + digits


def final_answer(task: str, text: str) -> str | None:
  """The last final answer in `text` ("14", "c", "true"), or None if it has none.

  arithmetic: `#### N` (commas and leading zeros dropped); logic: `answer: <a-d>`;
  facts: `answer: true|false`. Raises ValueError for a task that is not verifiable.
  """
  _require_verifiable(task)
  if task == "arithmetic":
    found = _HASH_ANSWER.findall(text)
    return _normalize_number(found[-1]) if found else None
  found = (_LETTER_ANSWER if task == "logic" else _BOOL_ANSWER).findall(text)
  return found[-1].lower() if found else None


def _evaluate(expression: str) -> int:
  """Value of a + - * expression over non-negative integers, with * binding tighter."""
  tokens = _TOKEN.findall(expression)
  total, term, sign = 0, int(tokens[0]), 1
  for op, number in zip(tokens[1::2], tokens[2::2]):
    if op == "*":
      term *= int(number)
    else:
      total += sign * term
      term, sign = int(number), (1 if op == "+" else -1)
  return total + sign * term


def _steps(draft: str) -> tuple[int, int]:
  """(steps found, steps arithmetically right) among the `... = r` patterns of a draft."""
  matches = [(expr, result)
             for expr, result in _CHAIN.findall(draft)
             if result and any(op in expr for op in "+-*")]
  return len(matches), sum(_evaluate(expression) == int(result) for expression, result in matches)


def _mentions(task: str, draft: str) -> set[str]:
  """The numbers (arithmetic) or lowercase words (logic, facts) of a draft."""
  if task == "arithmetic":
    return set(arithmetic.quantities(draft))
  return set(_WORD.findall(draft.lower()))


def elicited_answer(task: str, draft: str) -> str | None:
  """The answer of a draft that continues a prompt ending in `answer:` (Self-Refine's "improved
  answer:"): its own final answer when it writes one, else the answer it starts with (a number,
  a letter a-d, true or false)."""
  own = final_answer(task, draft)
  if own is not None:
    return own
  leading = _LEADING_ANSWER[task].match(draft)
  if leading is None:
    return None
  value = leading.group(1)
  return _normalize_number(value) if task == "arithmetic" else value.lower()


def check(example: Example, draft: str, after_answer_prompt: bool = False) -> CheckResult:
  """Score `draft` against `example`; any string draft is accepted, ValueError for filler
  examples. `after_answer_prompt`: the draft continues a prompt ending in `answer:`, so the
  answer it starts with counts (`elicited_answer`)."""
  _require_verifiable(example.task)
  expected = final_answer(example.task, example.answer)
  read = elicited_answer if after_answer_prompt else final_answer
  correct = expected is not None and read(example.task, draft) == expected
  steps_total, steps_right = _steps(draft) if example.task == "arithmetic" else (0, 0)
  wanted = _QUANTITIES[example.task](example.question)
  mentioned = _mentions(example.task, draft)
  used = sum(q in mentioned for q in wanted)
  return CheckResult(correct, steps_total, steps_right, len(wanted), used)
