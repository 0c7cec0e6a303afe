"""Bundled verifiable reasoning tasks: seeded generators, the pretraining mix, and answer checks.

Formats (all lowercase ASCII):
  arithmetic: answer is `a op b = c.` steps then `#### N`.
  logic: question ends with options `a) .. b) .. c) .. d) ..`;
         answer is a reason then `answer: <letter>`.
  facts: question is `facts: ... statement: ... true or false?`;
         answer is `the facts say ... answer: true|false`.
  probe: question lists links `a to b, ...` (a permutation of 0..9) and asks where following
         5 links from a start ends; answer is `#### end path n1 .. n4` (the end first, then
         the nodes that reach it).
  filler: a paragraph stored as `question`, with `answer == ""`; not checkable.
"""

from .base import TASKS, CheckResult, Example
from .checks import CHECKERS, TASK_CHECKERS, check, elicited_answer, final_answer, read_answer
from .corpus import bundled_corpus, generate

__all__ = [
    "CHECKERS", "TASKS", "TASK_CHECKERS", "CheckResult", "Example", "bundled_corpus", "check",
    "elicited_answer", "final_answer", "generate", "read_answer"
]
