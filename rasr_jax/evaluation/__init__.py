"""Evaluation of checkpoints (`--mode=eval`): see run.py. Needs the `eval` extra.

The task and method names live here (no lm-eval import), so main.py defines its flags and
rejects a misspelled name in a fraction of a second.
"""

from rasr_jax import config as config_lib
from rasr_jax import tasks
from rasr_jax.evaluation.methods import METHODS

HARNESS_TASKS = ("gsm8k", "truthfulqa_mc1", "truthfulqa_mc2", "logiqa", "hellaswag", "mmlu")
ALL_TASKS = (*tasks.TASKS, "qa", "perplexity", *HARNESS_TASKS)  # qa: data.qa_eval_files
DEFAULT_TASKS = "arithmetic,logic,facts,probe,support,perplexity"  # no benchmark file needed
DEFAULT_METHODS = "standard,rasr"
__all__ = [
    "ALL_TASKS", "DEFAULT_METHODS", "DEFAULT_TASKS", "HARNESS_TASKS", "METHODS", "parse_list"
]


def parse_list(text, allowed, what):
  """A comma-separated list, each item checked against `allowed`."""
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in allowed]
  if unknown or not names:
    raise config_lib.ConfigError(f"--eval_{what}: unknown {unknown or 'empty list'}; expected "
                                 f"some of {', '.join(allowed)}")
  return names
