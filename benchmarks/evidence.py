"""Does RASR help? Standard pretraining vs RASR at equal compute and equal tokens, 3 seeds.

  PYTHONPATH=. python benchmarks/evidence.py --workdir=/tmp/evidence [--config=configs/small.py]

For each seed, the config is trained four times from the same initial seed on the same data
stream:
  standard_tokens   reflection off, the same steps (equal tokens)
  standard_compute  reflection off, the steps that match RASR's training FLOPs
                    (`flops.flops_per_step`, every reflection pass and draft counted)
  rasr              the config's RASR (question/answer rows, free-running drafts)
  rasr_teacher      RASR with teacher-forced drafts: the control that cannot beat the
                    standard pass (docs/method.md)
Then `--mode=eval` scores held-out bundled tasks (the probe included) and perplexity: standard
models by their draft; RASR models by y(0) alone and by the answer given (critic + controller),
with accuracy per iteration, wrong->right / right->wrong, mean iterations and the critic's
AUROC. The table gives each figure's mean over the seeds and a 95 % t-interval (n - 1 degrees
of freedom); table.json keeps every seed's report and the eval directories keep the PNG plots
of accuracy per iteration. Runs are subprocesses of `python -m rasr_jax.main`; finished runs
are reused, so an interrupted benchmark resumes. Not in CI.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

from common import load_config
from rasr_jax import config as config_lib
from rasr_jax.training import flops

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/evidence", "Where runs and results go.")
_CONFIG = flags.DEFINE_string("config", "configs/small.py", "The RASR config (repo-relative).")
_SEEDS = flags.DEFINE_string(
    "seeds", "0,1,2", "Comma-separated config seeds (at least 3 for "
    "the table's intervals).")
_LIMIT = flags.DEFINE_integer("limit", 200, "Held-out items per task.")
_STEPS = flags.DEFINE_integer("steps", None, "Override train.steps of the RASR runs.")
_SET = flags.DEFINE_multi_string(
    "set", [], "A config override FIELD=VALUE for every run "
    "(repeatable), e.g. --set=model.num_layers=2.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("arithmetic", "logic", "facts", "probe")
TRAININGS = {  # name: (reflect overrides, eval methods)
    "standard_tokens": ({"enabled": False}, "standard"),
    "standard_compute": ({"enabled": False}, "standard"),
    "rasr": ({}, "standard,rasr"),
    "rasr_teacher": ({"draft_mode": "teacher_forced"}, "standard,rasr"),
}
ROWS = (  # (row label, training, method)
    ("Standard, equal tokens", "standard_tokens", "standard"),
    ("Standard, equal compute", "standard_compute", "standard"),
    ("RASR, draft y(0)", "rasr", "standard"),
    ("RASR, answer given", "rasr", "rasr"),
    ("RASR teacher-forced, y(0)", "rasr_teacher", "standard"),
    ("RASR teacher-forced, answer given", "rasr_teacher", "rasr"),
)
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _config():
  """The RASR config with --set overrides (and --steps), validated, on one device."""
  steps = [f"train.steps={_STEPS.value}"] if _STEPS.value else []
  config = load_config(os.path.join(REPO, _CONFIG.value), _SET.value + steps)
  return config_lib.resolve_mesh(config, 1)


def compute_matched_steps(config):
  """Standard steps with the training FLOPs of `config.train.steps` RASR steps."""
  standard = dataclasses.replace(config, reflect=dataclasses.replace(config.reflect, enabled=False))
  ratio = flops.flops_per_step(config) / flops.flops_per_step(standard)
  return round(config.train.steps * ratio), ratio


def _main(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_WORKDIR.value, "jax_cache"))
  cmd = [
      sys.executable, "-m", "rasr_jax.main", f"--config={os.path.join(REPO, _CONFIG.value)}", *args
  ]
  print("+", " ".join(cmd[2:]), flush=True)
  subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def run_seed(seed, training, steps):
  """results.json of `training` at `seed` and `steps`, training and evaluating if needed."""
  workdir = os.path.join(_WORKDIR.value, f"{training}_seed{seed}")
  reflect, methods = TRAININGS[training]
  overrides = [
      *(f"--config.{setting}" for setting in _SET.value), f"--config.seed={seed}",
      f"--config.train.steps={steps}", *(f"--config.reflect.{k}={v}" for k, v in reflect.items())
  ]
  results_path = os.path.join(workdir, "eval", "results.json")
  if not os.path.exists(results_path):
    # Resumes an interrupted run; a finished one resumes at its last step and does nothing.
    _main(f"--workdir={workdir}", *overrides)
    _main(f"--workdir={workdir}", "--mode=eval", *overrides, f"--eval_methods={methods}",
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


def _mean_auroc(report):
  """The critic's AUROC averaged over the tasks that have one (None for standard runs)."""
  values = [report[t]["critic_auroc"] for t in TASKS if report[t].get("critic_auroc") is not None]
  return statistics.fmean(values) if values else None


def table(results):
  """Markdown: a row per (training, method); each cell mean +- 95 % half-interval over seeds."""
  header = [
      "Run", *(f"{t} acc %" for t in TASKS), "perplexity (token)", "mean iterations",
      "wrong->right", "right->wrong", "critic AUROC"
  ]
  lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
  for label, training, method in ROWS:
    per_seed = [r["methods"][method] for r in results[training]]

    def cell(values, scale=1.0, digits=1):
      values = [v * scale for v in values if v is not None]
      if not values:
        return "-"
      mean, half = _mean_ci(values)
      return f"{mean:.{digits}f} ± {half:.{digits}f}"

    def total(s, key):  # summed over tasks and iterations
      return sum(sum(s[t].get(key, [])) for t in TASKS)

    cells = [cell([s[t]["accuracy"] for s in per_seed], 100) for t in TASKS]
    cells.append(cell([s["perplexity"]["token_perplexity"] for s in per_seed], digits=3))
    cells.append(
        cell([statistics.fmean(s[t]["mean_iterations"] for t in TASKS) for s in per_seed],
             digits=2))
    cells.append(cell([total(s, "wrong_to_right") for s in per_seed], digits=1))
    cells.append(cell([total(s, "right_to_wrong") for s in per_seed], digits=1))
    cells.append(cell([_mean_auroc(s) for s in per_seed], digits=3))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  config = _config()
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  steps = config.train.steps
  matched, ratio = compute_matched_steps(config)
  steps_of = {"standard_compute": matched}
  results = {
      training: [run_seed(seed, training, steps_of.get(training, steps)) for seed in seeds]
      for training in TRAININGS
  }
  text = table(results)
  summary = {
      "config": _CONFIG.value,
      "overrides": _SET.value,
      "seeds": seeds,
      "steps": steps,
      "standard_compute_steps": matched,
      "flops_ratio": ratio,
      "limit_per_task": _LIMIT.value,
      "table": text,
      "per_seed": {
          t: [r["methods"] for r in rs] for t, rs in results.items()
      }
  }
  with open(os.path.join(_WORKDIR.value, "table.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"steps {steps}; equal compute: {matched} standard steps (RASR / standard FLOPs "
        f"{ratio:.2f})")
  print(text)


if __name__ == "__main__":
  app.run(main)
