"""The source's Table 1 at tiny scale: standard pretraining vs RASR on the bundled tasks.

  PYTHONPATH=. python benchmarks/tiny_table1.py --workdir=/tmp/tiny_table1 [--seeds=0,1,2]

For each seed, configs/tiny.py is trained twice from the same initial seed on the same data
stream (the same steps x batch x sequence tokens, so equal token budgets): once as standard
pretraining (`reflect.enabled=False`) and once as RASR. Then `--mode=eval` scores, on the
held-out bundled tasks and held-out perplexity:
  standard model: standard (draft), cot (worked examples), self_refine
  RASR model:     standard (its draft y(0) alone), rasr (critic + controller)
The table gives each figure's mean over the seeds and a 95 % t-interval (n - 1 degrees of
freedom). Runs are subprocesses of `python -m rasr_jax.main`; finished runs are reused, so an
interrupted benchmark resumes. About 26 minutes on 2 CPU cores with the defaults; not in CI.
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/tiny_table1", "Where runs and results go.")
_SEEDS = flags.DEFINE_string(
    "seeds", "0,1,2", "Comma-separated config seeds (at least 3 for "
    "the table's intervals).")
_LIMIT = flags.DEFINE_integer("limit", 200, "Held-out items per task.")
_STEPS = flags.DEFINE_integer("steps", None, "Override train.steps (default: configs/tiny.py).")
_SET = flags.DEFINE_multi_string(
    "set", [], "A config override FIELD=VALUE for every run "
    "(repeatable), e.g. --set=model.num_layers=2.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("arithmetic", "logic", "facts")
ROWS = (  # (row label, training, method)
    ("Standard pretraining", "standard", "standard"),
    ("Chain-of-Thought", "standard", "cot"),
    ("Self-Refine", "standard", "self_refine"),
    ("RASR model, draft y(0) only", "rasr", "standard"),
    ("RASR (learned stop)", "rasr", "rasr"),
)
METHODS = {"standard": "standard,cot,self_refine", "rasr": "standard,rasr"}
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _main(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_WORKDIR.value, "jax_cache"))
  cmd = [sys.executable, "-m", "rasr_jax.main", f"--config={REPO}/configs/tiny.py", *args]
  print("+", " ".join(cmd[2:]), flush=True)
  subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def run_seed(seed, training):
  """results.json of `training` (standard | rasr) at `seed`, training and evaluating if needed."""
  workdir = os.path.join(_WORKDIR.value, f"{training}_seed{seed}")
  overrides = [
      f"--config.seed={seed}", f"--config.reflect.enabled={training == 'rasr'}",
      *(f"--config.{setting}" for setting in _SET.value)
  ]
  if _STEPS.value:
    overrides.append(f"--config.train.steps={_STEPS.value}")
  results_path = os.path.join(workdir, "eval", "results.json")
  if not os.path.exists(results_path):
    # Resumes an interrupted run; a finished one resumes at its last step and does nothing.
    _main(f"--workdir={workdir}", *overrides)
    _main(f"--workdir={workdir}", "--mode=eval", *overrides, f"--eval_methods={METHODS[training]}",
          f"--eval_tasks={','.join(TASKS)},perplexity", f"--eval_limit={_LIMIT.value}",
          f"--eval_output={os.path.join(workdir, 'eval')}", "--batch_size=32")
  with open(results_path) as f:
    return json.load(f)


def _mean_ci(values):
  mean = statistics.fmean(values)
  if len(values) < 2:
    return mean, float("nan")
  half = T_95[len(values) - 1] * statistics.stdev(values) / len(values)**0.5
  return mean, half


def table(results):
  """Markdown: a row per (training, method); each cell mean +- 95 % half-interval over seeds."""
  header = [
      "Method", *(f"{t} acc %" for t in TASKS), "mean acc %", "perplexity (token)",
      "mean iterations", "tokens / answer"
  ]
  lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
  for label, training, method in ROWS:
    per_seed = [r["methods"][method] for r in results[training]]

    def cell(values, scale=1.0, digits=1):
      mean, half = _mean_ci([v * scale for v in values])
      return f"{mean:.{digits}f} ± {half:.{digits}f}"

    cells = [cell([s[t]["accuracy"] for s in per_seed], 100) for t in TASKS]
    cells.append(cell([statistics.fmean(s[t]["accuracy"] for t in TASKS) for s in per_seed], 100))
    cells.append(cell([s["perplexity"]["token_perplexity"] for s in per_seed], digits=3))
    cells.append(
        cell([statistics.fmean(s[t]["mean_iterations"] for t in TASKS) for s in per_seed],
             digits=2))
    cells.append(
        cell([statistics.fmean(s[t]["mean_generated_tokens"] for t in TASKS) for s in per_seed]))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  results = {
      training: [run_seed(seed, training) for seed in seeds] for training in ("standard", "rasr")
  }
  text = table(results)
  summary = {
      "seeds": seeds,
      "limit_per_task": _LIMIT.value,
      "table": text,
      "per_seed": {
          t: [r["methods"] for r in rs] for t, rs in results.items()
      }
  }
  with open(os.path.join(_WORKDIR.value, "table1.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(text)


if __name__ == "__main__":
  app.run(main)
