"""Evaluation of checkpoints (`--mode=eval`): see run.py. Needs the `eval` extra."""

# Defaults of --eval_tasks and --eval_methods (here, so main.py defines its flags without
# importing lm-eval): the bundled tasks and perplexity run without any benchmark file.
DEFAULT_TASKS = "arithmetic,logic,facts,perplexity"
DEFAULT_METHODS = "standard,rasr"
