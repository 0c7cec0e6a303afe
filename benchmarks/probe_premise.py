"""Is the probe's first field hard in one pass? Standard models, sum first vs sum last.

  PYTHONPATH=. python benchmarks/probe_premise.py --workdir=/tmp/probe_premise [--steps=600]

The probe (rasr_jax/tasks/probe.py) answers `what is 347 + 589?` with the sum first, then the
column steps that reach it: `#### 936 steps 7+9+0=16 4+8+1=13 3+5+1=09`. A second look at one's
own draft can only help if the sum is hard to produce first and easy once the steps are written.
This trains two standard models (reflection off, configs/tiny.py unless --config) from the same
initial seed on the same additions, one with the sum first and one with the sum last
(`steps 7+9+0=16 4+8+1=13 3+5+1=09 #### 936`), and decodes held-out additions greedily. It
prints one JSON object: the sum's accuracy in each order (95 % Wilson intervals), the steps'
accuracy, and, in the sum-first order, how often the steps are right when the sum is wrong (what
a refinement could read). Held-out additions whose question is among the training ones are
skipped. Runs are subprocesses of `python -m rasr_jax.main`; a finished run is
reused. Not in CI.
"""

import itertools
import json
import os
import subprocess
import sys

from absl import app, flags

from common import load_config
from rasr_jax import tasks
from rasr_jax.evaluation import report
from rasr_jax.generation import inference
from rasr_jax.tasks import probe

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/probe_premise", "Where runs and results go.")
_CONFIG = flags.DEFINE_string("config", "configs/tiny.py", "The model and training config.")
_STEPS = flags.DEFINE_integer("steps", None, "Override train.steps.")
_EXAMPLES = flags.DEFINE_integer("examples", 20000, "Training additions.")
_LIMIT = flags.DEFINE_integer("limit", 500, "Held-out additions decoded per order.")
_SEED = flags.DEFINE_integer("seed", 0, "Config seed (held-out additions use another seed).")
_SET = flags.DEFINE_multi_string("set", [], "A config override FIELD=VALUE (repeatable).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELD_OUT_SEED = 7_777_777
ORDERS = {"sum_first": True, "sum_last": False}


def _settings(data_file):
  """FIELD=VALUE settings of a standard run on the additions in `data_file`."""
  return [
      *_SET.value, f"seed={_SEED.value}", "reflect.enabled=False", "data.source=files",
      f"data.files={data_file}", "train.eval_batches=0",
      *([f"train.steps={_STEPS.value}"] if _STEPS.value else [])
  ]


def _train(workdir, sum_first):
  """Trains (or resumes) a standard model on additions in one order; returns its settings."""
  os.makedirs(workdir, exist_ok=True)
  data_file = os.path.join(workdir, "additions.jsonl")
  if not os.path.exists(data_file):
    with open(data_file + ".tmp", "w") as f:
      for index in range(_EXAMPLES.value):
        example = probe.make(_SEED.value, index, sum_first)
        f.write(json.dumps({"text": example.text()}) + "\n")
    os.replace(data_file + ".tmp", data_file)
  settings = _settings(data_file)
  env = dict(os.environ, PYTHONPATH=REPO)
  cmd = [
      sys.executable, "-m", "rasr_jax.main", f"--config={os.path.join(REPO, _CONFIG.value)}",
      f"--workdir={workdir}", *(f"--config.{s}" for s in settings)
  ]
  print("+", " ".join(cmd[2:]), flush=True)
  subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
  return settings


def _score(workdir, settings, sum_first):
  model = inference.InferenceModel(load_config(os.path.join(REPO, _CONFIG.value), settings),
                                   workdir)
  seen = {probe.make(_SEED.value, i).question for i in range(_EXAMPLES.value)}
  pool = (probe.make(HELD_OUT_SEED, i, sum_first) for i in itertools.count())
  examples = list(itertools.islice((ex for ex in pool if ex.question not in seen), _LIMIT.value))
  options = model.options(max_new_tokens=48, reflect="off")
  outputs = model.generate([ex.question for ex in examples], options, batch_size=50)
  sum_right, steps_right = [], []
  for example, out in zip(examples, outputs):
    sum_right.append(tasks.check(example, out["text"]).correct)
    steps_right.append(probe.read_steps(out["text"]) == probe.read_steps(example.answer))
  n = len(examples)
  result = {
      "sum_accuracy": sum(sum_right) / n,
      "sum_accuracy_ci95": list(report.wilson_interval(sum(sum_right), n)),
      "steps_accuracy": sum(steps_right) / n,
      "items": n,
  }
  wrong = [s for right, s in zip(sum_right, steps_right) if not right]
  if wrong:
    result["steps_right_when_sum_wrong"] = sum(wrong) / len(wrong)
  result["samples"] = [out["text"] for out in outputs[:3]]
  return result


def main(argv):
  del argv
  results = {}
  for order, sum_first in ORDERS.items():
    workdir = os.path.join(_WORKDIR.value, order)
    results[order] = _score(workdir, _train(workdir, sum_first), sum_first)
  first, last = results["sum_first"]["sum_accuracy"], results["sum_last"]["sum_accuracy"]
  print(
      json.dumps(
          {
              "benchmark": "probe_premise",
              "config": _CONFIG.value,
              "overrides": _SET.value,
              "steps": _STEPS.value,
              "sum_first_minus_sum_last": first - last,
              **results
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
