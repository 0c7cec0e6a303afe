"""Entry point: python -m rasr_jax.main --config=configs/X.py --workdir=DIR [--mode=MODE].

Bad input (config, mesh, data, tokenizer, checkpoint) ends the run with one line on stderr and
exit code 2, before anything compiles.
"""

import importlib.util
import json
import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rasr_jax import config as config_lib
from rasr_jax import evaluation

_CONFIG = config_flags.DEFINE_config_file("config",
                                          None,
                                          "Path to a config file (Python; it runs as code).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, tokenizer, metrics.")
_MODE = flags.DEFINE_enum(
    "mode", "train", [
        "train", "sft", "dpo", "avr_data", "self_align", "describe", "compile", "generate", "score",
        "eval"
    ], "train; sft / dpo: supervised fine-tuning on config.sft.files / preference optimisation "
    "on config.dpo.files; avr_data: AvR data (config.avr.stage) from a checkpoint "
    "(docs/posttraining.md); self_align: config.self_align.rounds rounds of self-alignment from "
    "a checkpoint (docs/ufarsap.md); describe: sizes from shapes; "
    "compile: compile the sharded step ahead of time and print XLA's per-device memory; "
    "generate / score / eval: from a checkpoint.")
# Multi-process runs (see distributed.py; SLURM needs none of these, TPU VM slices pass
# --distributed).
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join the other processes found by jax's cluster detection (TPU VM "
    "slices; SLURM jobs of several tasks join without it).")
_BIND_ADDRESS = flags.DEFINE_string(
    "coordinator_bind_address", None, "Address process 0's coordinator listens on "
    "(default all interfaces).")
# Generation and scoring (--mode=generate / --mode=score).
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A step directory (WORKDIR/checkpoints/N) or a checkpoints directory; "
    "default: the newest checkpoint in --workdir.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "A prompt to continue (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string(
    "prompts_file", None, "Prompts, one per line, or JSONL objects with a 'prompt' field.")
_TEXT = flags.DEFINE_multi_string("text", None, "A text to score (repeatable).")
_TEXTS_FILE = flags.DEFINE_string(
    "texts_file", None, "Texts to score, one per line, or JSONL objects with a 'text' field.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Tokens per draft, at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k likeliest tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set with this mass.")
_STOP = flags.DEFINE_multi_string("stop", None, "A stop string (repeatable); <eos> always stops.")
_REFLECT = flags.DEFINE_enum(
    "reflect", "auto", ["auto", "off", "fixed", "learned"],
    "off: draft only; fixed: --iterations refinements; learned: the controller stops; auto: "
    "learned for a RASR model, off otherwise.")
_ITERATIONS = flags.DEFINE_integer("iterations", None, "Refinements, at most (default "
                                   "config.reflect.iterations).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 8, "Prompts or texts per batch (rounded up to a multiple of the "
    "data-parallel size).")
_OUTPUT = flags.DEFINE_string("output", "-", "JSON lines go here ('-' = stdout).")
# Evaluation (--mode=eval; see rasr_jax/evaluation/run.py).
_EVAL_TASKS = flags.DEFINE_string(
    "eval_tasks", evaluation.DEFAULT_TASKS,
    "Comma-separated: arithmetic, logic, facts, probe, support, qa (data.qa_eval_files), "
    "perplexity, gsm8k, truthfulqa_mc1, truthfulqa_mc2, logiqa, hellaswag, mmlu.")
_EVAL_METHODS = flags.DEFINE_string(
    "eval_methods", evaluation.DEFAULT_METHODS, "Comma-separated inference methods: standard, cot, "
    "self_refine, constitutional, chat (the draft, asked in the chat layout), avr (an AvR Stage II "
    "model's final answer), rasr (rasr = reflection on; standard = draft only).")
_BENCHMARKS_DIR = flags.DEFINE_string(
    "benchmarks_dir", None, "The public benchmark files (gsm8k/, truthfulqa/, logiqa/, "
    "hellaswag/, mmlu/ as published) for the lm-eval tasks.")
_EVAL_LIMIT = flags.DEFINE_integer("eval_limit", 200, "Items per task, at most.")
_EVAL_OUTPUT = flags.DEFINE_string(
    "eval_output", None, "Directory for results.json, table.md, PNGs, samples (default "
    "WORKDIR/eval/step_N).")

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_SAVE_FAILED = 4


def _exit_with_error(message, code):
  """Ends the process with `error: message` as the last line of stderr.

  Every log handler and stream is flushed first, and the process exits without the
  interpreter's teardown (library exit hooks and background threads could still log after the
  line); a process of a multi-process job leaves it first. Checkpoints and metrics are closed
  before an error gets here.
  """
  if "jax" in sys.modules:  # else no job was joined, and importing jax would cost seconds
    from rasr_jax import distributed
    distributed.leave()
  for handler in [*std_logging.getLogger().handlers, logging.get_absl_handler()]:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  os._exit(code)


def _exit_bad_input(message):
  _exit_with_error(message, EXIT_BAD_INPUT)


def _override_problem(argv, error):
  """Explains a failed --config.a.b=v override by naming the unknown field."""
  text = str(error)
  hint = re.search(r'Did you mean "(\w+)"', text)
  unknown = re.search(r"\w+", text)  # the message starts with the name that is not a field
  for arg in argv[1:]:
    if arg.startswith("--config.") and "=" in arg and unknown:
      path = arg[len("--config."):].split("=", 1)[0]
      if unknown.group() in path.split("."):
        suggestion = f" (did you mean {hint.group(1)}?)" if hint else ""
        return f"{arg}: unknown config field config.{path}{suggestion}"
  return f"bad config override: {text.splitlines()[0] if text else error!r}"


def _missing_config_file(argv):
  """The --config path (less its `:preset`) when it names no file, else None."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg[len("--config="):].split(":", 1)[0]
      return None if os.path.isfile(path) else path
  return None


def parse_flags(argv):
  """absl flag parsing whose config errors become one line and exit code 2."""
  missing = _missing_config_file(argv)
  if missing:
    _exit_bad_input(f"--config: no config file at {missing}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # ml_collections puts the cause (e.g. get_config's) on the last line
    lines = [line for line in str(e).splitlines() if line.strip()]
    _exit_bad_input(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1].strip()}")
  except (AttributeError, KeyError) as e:
    _exit_bad_input(_override_problem(argv, e))
  except (TypeError, ValueError) as e:
    _exit_bad_input(f"bad config value: {e}")
  except (OSError, ImportError, SyntaxError) as e:
    _exit_bad_input(f"cannot load the config file: {e}")


class _QuietLibraryInfo(std_logging.Filter):
  """Drops the per-save INFO chatter of orbax, and its notices that a checkpoint directory is
  opened read-only (as `init_from` and a DPO reference are); its other warnings and errors
  still show."""

  def filter(self, record):
    if "/orbax/" not in record.pathname:
      return True
    read_only = "read_only=True" in str(record.msg) or "read only" in str(record.msg)
    return record.levelno >= std_logging.WARNING and not read_only


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraryInfo())
  if _CONFIG.value is None:
    _exit_bad_input("--config is required")
  try:  # before jax and the other heavy libraries load: config errors come in a second
    config = config_lib.load(_CONFIG.value)
    for flag in (_WORKDIR, _CHECKPOINT, _PROMPTS_FILE, _TEXTS_FILE, _OUTPUT, _EVAL_OUTPUT,
                 _BENCHMARKS_DIR):
      if flag.value:
        config_lib.check_path(f"--{flag.name}", flag.value, local_only=flag is _BENCHMARKS_DIR)
    if _BATCH_SIZE.value < 1:
      raise config_lib.ConfigError(f"--batch_size={_BATCH_SIZE.value}: must be >= 1")
    if _MODE.value == "eval":
      evaluation.parse_list(_EVAL_TASKS.value, evaluation.ALL_TASKS, "tasks")
      evaluation.parse_list(_EVAL_METHODS.value, evaluation.METHODS, "methods")
  except config_lib.ConfigError as e:
    _exit_bad_input(str(e))
  from rasr_jax import distributed
  from rasr_jax.data import sources, tokenizer
  from rasr_jax.modes import describe
  from rasr_jax.training import checkpoint, loop

  try:
    if _MODE.value != "describe" and distributed.initialize(_COORDINATOR.value,
                                                            _NUM_PROCESSES.value,
                                                            _PROCESS_ID.value,
                                                            _BIND_ADDRESS.value,
                                                            detect=_DISTRIBUTED.value):
      import jax
      if jax.process_index():  # only process 0 logs progress; warnings still show
        logging.set_verbosity(logging.WARNING)
    if _MODE.value == "describe":
      import jax
      print(json.dumps(describe.describe(config, jax.device_count()), indent=2))
      return
    if _MODE.value == "compile":
      import jax

      from rasr_jax.modes import compile_check
      config = config_lib.resolve_mesh(config, jax.device_count())
      print(json.dumps(compile_check.compile_report(config), indent=2))
      return
    if not _WORKDIR.value:
      _exit_bad_input(f"--workdir is required for --mode={_MODE.value}")
    if _MODE.value == "train":
      loop.train(config, _WORKDIR.value)
    elif _MODE.value == "sft":
      from rasr_jax.posttrain import sft
      sft.train(config, _WORKDIR.value)
    elif _MODE.value == "dpo":
      from rasr_jax.posttrain import dpo
      dpo.train(config, _WORKDIR.value)
    elif _MODE.value == "avr_data":
      from rasr_jax.posttrain import avr_data
      print(json.dumps(avr_data.build(config, _WORKDIR.value, _CHECKPOINT.value), indent=2))
    elif _MODE.value == "self_align":
      _require_eval_extra()  # every round is evaluated
      from rasr_jax.posttrain import self_align
      print(json.dumps(self_align.run(config, _WORKDIR.value, _CHECKPOINT.value), indent=2))
    elif _MODE.value == "eval":
      _evaluate(config)
    else:
      _infer(config)
  except (config_lib.ConfigError, sources.DataError, tokenizer.TokenizerError,
          checkpoint.CheckpointError) as e:
    _exit_bad_input(str(e))
  except loop.NonFiniteError as e:
    _exit_with_error(str(e), EXIT_NON_FINITE)
  except checkpoint.SaveError as e:
    _exit_with_error(str(e), EXIT_SAVE_FAILED)
  logging.info("done")


def _infer(config):
  """--mode=generate or --mode=score: JSON lines, one per input, in input order."""
  from rasr_jax.generation import inference
  if _MODE.value == "generate":
    prompts = inference.gather_inputs(_PROMPT.value, _PROMPTS_FILE.value, "prompt",
                                      "--prompt or --prompts_file")
  else:
    texts = inference.gather_inputs(_TEXT.value, _TEXTS_FILE.value, "text",
                                    "--text or --texts_file")
  model = inference.InferenceModel(config, _WORKDIR.value, _CHECKPOINT.value)
  if _MODE.value == "score":
    records = model.score(texts, _BATCH_SIZE.value)
  else:
    try:
      options = model.options(max_new_tokens=_MAX_NEW_TOKENS.value,
                              temperature=_TEMPERATURE.value,
                              top_k=_TOP_K.value,
                              top_p=_TOP_P.value,
                              stop=tuple(_STOP.value or ()),
                              reflect=_REFLECT.value,
                              iterations=_ITERATIONS.value)
    except ValueError as e:  # an option out of range
      raise config_lib.ConfigError(str(e)) from None
    records = model.generate(prompts, options, seed=_SEED.value, batch_size=_BATCH_SIZE.value)
  inference.write_jsonl(records, _OUTPUT.value)


def _require_eval_extra():
  """Exits with one error line when the eval extra is not installed (looked up, not imported:
  lm-eval must load after evaluation has switched its downloads off)."""
  missing = [m for m in ("lm_eval", "matplotlib") if importlib.util.find_spec(m) is None]
  if missing:
    _exit_bad_input(f"--mode={_MODE.value} needs the eval extra (pip install -e '.[eval]'): "
                    f"{', '.join(missing)} not installed")


def _evaluate(config):
  """--mode=eval: results.json, table.md and plots on disk; the results as JSON on stdout."""
  _require_eval_extra()
  from rasr_jax.evaluation import run as eval_run
  results = eval_run.evaluate(config,
                              _WORKDIR.value,
                              checkpoint=_CHECKPOINT.value,
                              task_list=_EVAL_TASKS.value,
                              method_list=_EVAL_METHODS.value,
                              benchmarks_dir=_BENCHMARKS_DIR.value,
                              limit=_EVAL_LIMIT.value,
                              output_dir=_EVAL_OUTPUT.value,
                              max_new_tokens=_MAX_NEW_TOKENS.value,
                              batch_size=_BATCH_SIZE.value,
                              seed=_SEED.value)
  print(json.dumps(results, indent=2))


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
