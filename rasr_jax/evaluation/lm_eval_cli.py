"""lm-eval's own command line, with rasr_jax's model registered as `rasr`.

  python -m rasr_jax.evaluation.lm_eval_cli run --model rasr \
      --model_args workdir=W,config=configs/tiny.py[,method=rasr] --tasks arc_easy \
      --output_path OUT [any other flag of lm_eval]

Every flag is lm-eval's (tasks from its index or `--include_path`, `--limit`, `--log_samples`,
progress bars, and results in its EvaluationTracker layout under `--output_path`). The bare
`lm_eval` command cannot find the model: lm-eval 0.4 looks models up in its own table only and
reads no package entry points, so this module imports the adapter (which registers it) and then
hands the command line to lm-eval. The console script `rasr-lm-eval` is the same.
"""

from lm_eval.__main__ import cli_evaluate

from rasr_jax.evaluation import harness  # noqa: F401  (registers the `rasr` model)


def main():
  cli_evaluate()


if __name__ == "__main__":
  main()
