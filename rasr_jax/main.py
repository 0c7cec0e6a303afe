"""Entry point: python -m rasr_jax.main --config=configs/X.py --workdir=DIR [--mode=MODE].

Bad input (config, mesh, data, tokenizer, checkpoint) ends the run with one line on stderr and
exit code 2, before anything compiles.
"""

import json
import logging as std_logging
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rasr_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (Python; it runs as code).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, tokenizer, metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "describe"], "What to do.")

EXIT_BAD_INPUT = 2


def _exit_bad_input(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _override_problem(argv, error):
  """Explains a failed --config.a.b=v override by naming the unknown field."""
  text = str(error)
  hint = re.search(r'Did you mean "(\w+)"', text)
  for arg in argv[1:]:
    if arg.startswith("--config.") and "=" in arg:
      path = arg[len("--config."):].split("=", 1)[0]
      if path.split(".")[-1] in text:
        suggestion = f" (did you mean {hint.group(1)}?)" if hint else ""
        return f"{arg}: unknown config field config.{path}{suggestion}"
  return f"bad config override: {text.splitlines()[0] if text else error!r}"


def parse_flags(argv):
  """absl flag parsing whose config errors become one line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit_bad_input(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    _exit_bad_input(_override_problem(argv, e))
  except (TypeError, ValueError) as e:
    _exit_bad_input(f"bad config value: {e}")
  except (OSError, ImportError, SyntaxError) as e:
    _exit_bad_input(f"cannot load the config file: {e}")


class _QuietLibraryInfo(std_logging.Filter):
  """Drops the per-save INFO chatter of orbax; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraryInfo())
  # Imported here so that flag errors are reported before jax starts.
  from rasr_jax import checkpoint, describe, train
  from rasr_jax.data import sources, tokenizer

  if _CONFIG.value is None:
    _exit_bad_input("--config is required")
  try:
    config = config_lib.load(_CONFIG.value)
    if _MODE.value == "describe":
      import jax
      print(json.dumps(describe.describe(config, jax.device_count()), indent=2))
      return
    if not _WORKDIR.value:
      _exit_bad_input("--workdir is required for --mode=train")
    train.train(config, _WORKDIR.value)
  except (config_lib.ConfigError, sources.DataError, tokenizer.TokenizerError,
          checkpoint.CheckpointError) as e:
    _exit_bad_input(str(e))
  logging.info("done")


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
