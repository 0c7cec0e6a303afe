"""Core records shared by all bundled tasks."""

import dataclasses

TASKS: tuple[str, ...] = ("arithmetic", "logic", "facts", "probe", "support")
"""The verifiable tasks; "filler" is generated too but has no answer to check."""

ALL_TASKS: tuple[str, ...] = TASKS + ("filler",)

# What separates a question from its answer in a document: a model prompted with the question
# writes it first, so a reflection row's target y* starts with it (data/qa.py).
ANSWER_SEPARATOR = "\n"


@dataclasses.dataclass(frozen=True)
class Example:
  """One generated item: a prompt and its reference target."""

  task: str
  uid: str
  question: str
  answer: str  # the reference: what checkers, reflection targets and worked examples use
  # A careless reply to the question that the pretraining document carries instead of the
  # answer (support tickets: unsafe habits a draft can pick up), or "".
  careless_answer: str = ""

  def text(self) -> str:
    """Question, newline, reference answer (the question alone when the answer is empty)."""
    return f"{self.question}{ANSWER_SEPARATOR}{self.answer}" if self.answer else self.question

  def document(self) -> str:
    """The pretraining document: `text()`, with the careless answer in place of the answer
    when there is one."""
    if self.careless_answer:
      return f"{self.question}{ANSWER_SEPARATOR}{self.careless_answer}"
    return self.text()


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """How a draft fares against an example's reference answer."""

  correct: bool
  steps_total: int
  steps_right: int
  quantities_total: int
  quantities_used: int

  def scores(self) -> tuple[float, float, float]:
    """TrueQuality of the draft (RASR.md §5): factual = the answer is right; logic = the share
    of its steps that are right; relevance = the share of the question's quantities it
    mentions. With no step (no quantity) to count, logic (relevance) is factual."""
    factual = float(self.correct)
    logic = self.steps_right / self.steps_total if self.steps_total else factual
    relevance = self.quantities_used / self.quantities_total if self.quantities_total else factual
    return factual, logic, relevance
