"""Scoring a free-form draft against a verifiable example.

Every answer is read by one of the CHECKERS: `final_answer` (the number after the last `####`,
the GSM8K convention; commas and leading zeros dropped), `choice` (the letter of the last
`answer: <a-d>`), `true_false` (the last `answer: true|false`) and `exact` (the whole text,
whitespace-normalised). The bundled tasks use the first three (TASK_CHECKERS); a user's
question/answer files name theirs (`data.qa_checker`). Beside the answer, `check_answer` counts
a draft's `a op b = c` steps and the question's quantities it mentions (RASR.md §5).
`rasr_jax/reflection/answers.py` and `working.py` read the same from a draft's bytes on device.
"""

import re

from . import arithmetic, facts, logic, probe, support
from .base import TASKS, CheckResult, Example

_HASH_ANSWER = re.compile(r"####\s*(-?\d[\d,]*)")
_LETTER_ANSWER = re.compile(r"answer\s*:\s*\(?([a-d])\b", re.I)
_BOOL_ANSWER = re.compile(r"answer\s*:\s*(true|false)\b", re.I)
# The answer a draft starts with, by checker, for a draft that continues a prompt ending in
# `answer:`.
_LEADING_ANSWER = {
    "final_answer": re.compile(r"\s*(?:####\s*)?(-?\d[\d,]*)"),
    "choice": re.compile(r"\s*\(?([a-d])\b", re.I),
    "true_false": re.compile(r"\s*(true|false)\b", re.I),
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
    "probe": probe.quantities,
    "support": support.quantities,
}

# What a draft of a question should mention (relevance): at most MAX_QUANTITIES of the question's
# quantities, each at most QUANTITY_BYTES bytes of UTF-8 (the widths of a reflection row).
MAX_QUANTITIES = 8
QUANTITY_BYTES = 16

CHECKERS = ("exact", "final_answer", "choice", "true_false")
TASK_CHECKERS = {
    "arithmetic": "final_answer",
    "logic": "choice",
    "facts": "true_false",
    "probe": "final_answer",
    "support": "final_answer"
}
_PATTERNS = {"final_answer": _HASH_ANSWER, "choice": _LETTER_ANSWER, "true_false": _BOOL_ANSWER}


def _require_verifiable(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"task {task!r} has no checkable answer; expected one of {TASKS}")


def read_answer(checker: str, text: str) -> str | None:
  """The answer `checker` (one of CHECKERS) reads in `text`, normalised, or None if it finds
  none: `final_answer` "14" (commas and leading zeros dropped), `choice` "c", `true_false`
  "true", `exact` the whitespace-normalised text (None when empty)."""
  if checker == "exact":
    return " ".join(text.split()) or None
  if checker not in _PATTERNS:
    raise ValueError(f"unknown checker {checker!r}; expected one of {CHECKERS}")
  found = _PATTERNS[checker].findall(text)
  return _normalized(checker, found[-1]) if found else None


def _normalized(checker: str, value: str) -> str:
  """A read answer as checkers compare it: numbers without commas and leading zeros, the rest
  lowercase."""
  return _normalize_number(value) if checker == "final_answer" else value.lower()


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
  return read_answer(TASK_CHECKERS[task], text)


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


def quantities(task: str, question: str) -> list[str]:
  """The quantities of `question` a draft should use: a bundled task's own (its numbers, names
  or entities), the question's numbers for any other task (a user's records); the first
  MAX_QUANTITIES of those with at most QUANTITY_BYTES bytes."""
  found = _QUANTITIES.get(task, arithmetic.quantities)(question)
  return [q for q in found if len(q.encode()) <= QUANTITY_BYTES][:MAX_QUANTITIES]


def _mentions(checker: str, draft: str) -> set[str]:
  """The numbers (answers read by `final_answer`: digit runs, leading zeros dropped) or
  lowercase words (other checkers: runs of [a-z0-9]) of a draft."""
  if checker == "final_answer":
    return set(arithmetic.quantities(draft))
  return set(_WORD.findall(draft.lower()))


def elicited_answer(task: str, draft: str) -> str | None:
  """The answer of a draft that continues a prompt ending in `answer:` (Self-Refine's "improved
  answer:"): its own final answer when it writes one, else the answer it starts with (a number,
  a letter a-d, true or false)."""
  _require_verifiable(task)
  return _elicited(TASK_CHECKERS[task], draft)


def _elicited(checker: str, draft: str) -> str | None:
  own = read_answer(checker, draft)
  if own is not None or checker not in _LEADING_ANSWER:  # `exact` reads the whole draft
    return own
  leading = _LEADING_ANSWER[checker].match(draft)
  return None if leading is None else _normalized(checker, leading.group(1))


def answer_is_right(checker: str,
                    reference: str,
                    draft: str,
                    after_answer_prompt: bool = False) -> bool:
  """Whether `checker` reads the same answer in `draft` as in the `reference` answer (and finds
  one). `after_answer_prompt`: the draft continues a prompt ending in `answer:`, so the answer it
  starts with counts (`elicited_answer`)."""
  expected = read_answer(checker, reference)
  read = _elicited(checker, draft) if after_answer_prompt else read_answer(checker, draft)
  return expected is not None and read == expected


def check_answer(checker: str,
                 reference: str,
                 wanted: list[str],
                 draft: str,
                 after_answer_prompt: bool = False) -> CheckResult:
  """Score `draft` against a `reference` answer read by `checker` and the question's `wanted`
  quantities (`quantities`): the answer, the draft's `a op b = c` steps and the quantities it
  mentions. `after_answer_prompt`: as in `answer_is_right`."""
  correct = answer_is_right(checker, reference, draft, after_answer_prompt)
  steps_total, steps_right = _steps(draft)
  mentioned = _mentions(checker, draft)
  used = sum(q in mentioned for q in wanted)
  return CheckResult(correct, steps_total, steps_right, len(wanted), used)


def check(example: Example, draft: str, after_answer_prompt: bool = False) -> CheckResult:
  """Score `draft` against `example` (`check_answer` with the task's checker and quantities);
  any string draft is accepted, ValueError for filler examples."""
  _require_verifiable(example.task)
  return check_answer(TASK_CHECKERS[example.task], example.answer,
                      quantities(example.task, example.question), draft, after_answer_prompt)
