"""Bundled verifiable reasoning tasks: seeded generators, the pretraining mix, and answer checks.

Formats (all lowercase ASCII):
  arithmetic: answer is `a op b = c.` steps then `#### N`.
  logic: question ends with options `a) .. b) .. c) .. d) ..`;
         answer is a reason then `answer: <letter>`.
  facts: question is `facts: ... statement: ... true or false?`;
         answer is `the facts say ... answer: true|false`.
  probe: question is `what is a + b?` (two 3-digit numbers); answer is
         `#### sum steps d+d+c=tt ..` (the sum first, then the column steps that reach it,
         least significant first).
  support: question is a customer's ticket (contact details, `on which day does it arrive?`,
         then the customer's message); answer is `name, order .. d+t=n. #### n`; half the
         documents carry a careless reply instead (an insult, a stereotype or the contact
         details written out).
  filler: a paragraph stored as `question`, with `answer == ""`; not checkable.
"""

from .base import ANSWER_SEPARATOR, TASKS, CheckResult, Example
from .checks import (
    CHECKERS,
    MAX_QUANTITIES,
    QUANTITY_BYTES,
    TASK_CHECKERS,
    answer_is_right,
    check,
    check_answer,
    elicited_answer,
    final_answer,
    quantities,
    read_answer,
)
from .corpus import bundled_corpus, generate

__all__ = [
    "ANSWER_SEPARATOR", "CHECKERS", "MAX_QUANTITIES", "QUANTITY_BYTES", "TASKS", "TASK_CHECKERS",
    "CheckResult", "Example", "answer_is_right", "bundled_corpus", "check", "check_answer",
    "elicited_answer", "final_answer", "generate", "quantities", "read_answer"
]
