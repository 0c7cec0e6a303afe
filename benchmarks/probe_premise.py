"""Is the probe's first field hard in one pass? Standard models, end first vs end last.

  PYTHONPATH=. python benchmarks/probe_premise.py --workdir=/tmp/probe_premise [--steps=300]

The probe (rasr_jax/tasks/probe.py) answers a walk with its end first, then the states that
reach it: `#### 10 path 11 9 18 13 16`. A second look at one's own draft can only help if the end
is hard to produce first and easy once the path is written. This trains two standard models
(reflection off, configs/tiny.py unless --config) from the same initial seed on the same walks,
one with the end first and one with the end last (`path 11 9 18 13 16 #### 10`), and decodes
held-out walks greedily. It prints one JSON object: the end's accuracy in each order (95 %
Wilson intervals), the path's accuracy, and, in the end-first order, how often the path is right
when the end is wrong (what a refinement could read). Runs are subprocesses of
`python -m rasr_jax.main`; a finished run is reused. Not in CI.
"""

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
_EXAMPLES = flags.DEFINE_integer("examples", 20000, "Training walks.")
_LIMIT = flags.DEFINE_integer("limit", 500, "Held-out walks decoded per order.")
_SEED = flags.DEFINE_integer("seed", 0, "Config seed (held-out walks use another seed).")
_SET = flags.DEFINE_multi_string("set", [], "A config override FIELD=VALUE (repeatable).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELD_OUT_SEED = 7_777_777
ORDERS = {"end_first": True, "end_last": False}


def _settings(data_file):
  """FIELD=VALUE settings of a standard run on the walks in `data_file`."""
  return [
      *_SET.value, f"seed={_SEED.value}", "reflect.enabled=False", "data.source=files",
      f"data.files={data_file}", "train.eval_batches=0",
      *([f"train.steps={_STEPS.value}"] if _STEPS.value else [])
  ]


def _train(workdir, end_first):
  """Trains (or resumes) a standard model on walks in one order; returns its settings."""
  os.makedirs(workdir, exist_ok=True)
  data_file = os.path.join(workdir, "walks.jsonl")
  if not os.path.exists(data_file):
    with open(data_file + ".tmp", "w") as f:
      for index in range(_EXAMPLES.value):
        example = probe.make(_SEED.value, index, end_first)
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


def _path(text):
  """The states after `path` in a decoded answer, as strings (up to a `####`)."""
  after = text.split("path", 1)[1] if "path" in text else ""
  return after.split("####", 1)[0].split()


def _score(workdir, settings, end_first):
  model = inference.InferenceModel(load_config(os.path.join(REPO, _CONFIG.value), settings),
                                   workdir)
  walks = [probe.walk(HELD_OUT_SEED, i) for i in range(_LIMIT.value)]
  examples = [probe.make(HELD_OUT_SEED, i, end_first) for i in range(_LIMIT.value)]
  options = model.options(max_new_tokens=48, reflect="off")
  outputs = model.generate([ex.question for ex in examples], options, batch_size=50)
  end_right, path_right = [], []
  for example, (start, moves), out in zip(examples, walks, outputs):
    reference = _path(probe.format_answer(start, moves, end_first))
    end_right.append(tasks.check(example, out["text"]).correct)
    path_right.append(_path(out["text"]) == reference)
  n = len(examples)
  result = {
      "end_accuracy": sum(end_right) / n,
      "end_accuracy_ci95": list(report.wilson_interval(sum(end_right), n)),
      "path_accuracy": sum(path_right) / n,
      "items": n,
  }
  wrong = [p for e, p in zip(end_right, path_right) if not e]
  if wrong:
    result["path_right_when_end_wrong"] = sum(wrong) / len(wrong)
  result["samples"] = [out["text"] for out in outputs[:3]]
  return result


def main(argv):
  del argv
  results = {}
  for order, end_first in ORDERS.items():
    workdir = os.path.join(_WORKDIR.value, order)
    results[order] = _score(workdir, _train(workdir, end_first), end_first)
  first, last = results["end_first"]["end_accuracy"], results["end_last"]["end_accuracy"]
  print(
      json.dumps(
          {
              "benchmark": "probe_premise",
              "config": _CONFIG.value,
              "overrides": _SET.value,
              "steps": _STEPS.value,
              "end_first_minus_end_last": first - last,
              **results
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
