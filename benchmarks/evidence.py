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
and, when named in --trainings (docs/ufarsap.md), UFARSAP and its Table 4 ablations:
  ufarsap           the unified loss, a committee of 3, hierarchical critics, the misinformation
                    safety dimension and adaptive strategies
  ufarsap_no_orchestration, ufarsap_no_adaptive_evolution, ufarsap_no_coordination
                    the same less one part
  self_align        --mode=self_align (2 rounds) from the seed's `rasr` run; its last model
                    scored by its draft
Then `--mode=eval` scores held-out bundled tasks (the probe included) and perplexity: standard
models by their draft; RASR models by y(0) alone and by the answer given (critic + controller),
with accuracy per iteration, wrong->right / right->wrong, mean iterations and the critic's
AUROC. The table gives each figure's mean over the seeds and a 95 % t-interval (n - 1 degrees
of freedom); table.json keeps every seed's report and the eval directories keep the PNG plots
of accuracy per iteration. Runs are subprocesses of `python -m rasr_jax.main`; finished runs
are reused, so an interrupted benchmark resumes. Not in CI.

--probe_only trains every run on the probe alone (its additions as question/answer files) and
scores held-out additions (the `qa` task); it also reports, per draft, how often every column
step is right.
"""

import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

from common import load_config, mean_ci
from rasr_jax import config as config_lib
from rasr_jax import tasks
from rasr_jax.tasks import probe
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
_PROBE_ONLY = flags.DEFINE_bool(
    "probe_only", False, "Train and evaluate on the probe alone (sum first, as question/answer "
    "files): does refinement learn to read its own draft where a second look can help?")
_TRAININGS = flags.DEFINE_string(
    "trainings", None, "Comma-separated trainings to run, in order (default: standard_tokens, "
    "standard_compute, rasr, rasr_teacher; UFARSAP's and self_align when named).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_EXAMPLES = 60_000  # question/answer records, and as many further additions as text
PROBE_HELD_OUT_SEED = 7_777_777
UFARSAP = {
    "unified.enabled": True,
    "critics.agents": 3,
    "critics.hierarchy": True,
    "safety_dims": "misinformation",
    "strategies.weights": "0.2,0.2,0.2;0.3,0.1,0.2;0.1,0.3,0.2"
}
TRAININGS = {  # name: (reflect overrides, eval methods)
    "standard_tokens": ({
        "enabled": False
    }, "standard"),
    "standard_compute": ({
        "enabled": False
    }, "standard"),
    "rasr": ({}, "standard,rasr"),
    "rasr_teacher": ({
        "draft_mode": "teacher_forced"
    }, "standard,rasr"),
    "ufarsap": (UFARSAP, "standard,rasr"),
    "ufarsap_no_orchestration": ({
        **UFARSAP, "critics.agents": 1,
        "critics.hierarchy": False
    }, "standard,rasr"),
    "ufarsap_no_adaptive_evolution": ({
        **UFARSAP, "strategies.weights": ""
    }, "standard,rasr"),
    "ufarsap_no_coordination": ({
        **UFARSAP, "unified.coordination_weight": 0.0
    }, "standard,rasr"),
    "self_align": ({}, "standard"),  # from the `rasr` run (`run_seed`)
}
DEFAULT_TRAININGS = ("standard_tokens", "standard_compute", "rasr", "rasr_teacher")
ROUNDS = 2  # self-alignment rounds of the `self_align` training
AUROC_DIMENSIONS = ("factual", "logic", "relevance")  # the critic's, each against its own target
ROWS = (  # (row label, training, method)
    ("Standard, equal tokens", "standard_tokens", "standard"),
    ("Standard, equal compute", "standard_compute", "standard"),
    ("RASR, draft y(0)", "rasr", "standard"),
    ("RASR, answer given", "rasr", "rasr"),
    ("RASR teacher-forced, y(0)", "rasr_teacher", "standard"),
    ("RASR teacher-forced, answer given", "rasr_teacher", "rasr"),
    ("UFARSAP, answer given", "ufarsap", "rasr"),
    ("UFARSAP without orchestration", "ufarsap_no_orchestration", "rasr"),
    ("UFARSAP without adaptive evolution", "ufarsap_no_adaptive_evolution", "rasr"),
    ("UFARSAP without coordination", "ufarsap_no_coordination", "rasr"),
    ("RASR + 2 self-alignment rounds", "self_align", "standard"),
)


def _tasks():
  return ("qa",) if _PROBE_ONLY.value else tasks.TASKS


def _write_jsonl(path, records):
  if not os.path.exists(path):
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(record) + "\n" for record in records)
    os.replace(path + ".tmp", path)


def _probe_settings():
  """FIELD=VALUE settings that train on the probe alone (--probe_only), its files written once:
  PROBE_EXAMPLES question/answer records (also documents), as many further additions as text
  documents, and held-out additions whose questions training never saw (the `qa` evaluation
  task and perplexity)."""
  if not _PROBE_ONLY.value:
    return []
  folder = os.path.join(_WORKDIR.value, "probe_data")
  os.makedirs(folder, exist_ok=True)
  train = [probe.make(0, i) for i in range(2 * PROBE_EXAMPLES)]
  seen = {ex.question for ex in train}
  pool = (probe.make(PROBE_HELD_OUT_SEED, i) for i in itertools.count())
  held_out = itertools.islice((ex for ex in pool if ex.question not in seen), _LIMIT.value)
  files = {name: os.path.join(folder, f"{name}.jsonl") for name in ("qa", "text", "held_out")}
  _write_jsonl(files["qa"], ({
      "prompt": ex.question,
      "answer": ex.answer
  } for ex in train[:PROBE_EXAMPLES]))
  _write_jsonl(files["text"], ({"text": ex.text()} for ex in train[PROBE_EXAMPLES:]))
  _write_jsonl(files["held_out"], ({
      "prompt": ex.question,
      "answer": ex.answer,
      "text": ex.text()
  } for ex in held_out))
  return [
      "data.source=files", f"data.files={files['text']}", f"data.qa_files={files['qa']}",
      "data.qa_checker=final_answer", f"data.qa_eval_files={files['held_out']}",
      f"data.eval_files={files['held_out']}", "reflect.prompt_len=16", "reflect.target_len=36"
  ]


def _config(settings):
  """The RASR config with `settings` (and --steps), validated, on one device."""
  steps = [f"train.steps={_STEPS.value}"] if _STEPS.value else []
  config = load_config(os.path.join(REPO, _CONFIG.value), settings + steps)
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


def _run_dir(seed, training):
  return os.path.join(_WORKDIR.value, f"{training}_seed{seed}")


def run_seed(seed, training, steps, settings):
  """results.json of `training` at `seed` and `steps`, training and evaluating if needed."""
  workdir = _run_dir(seed, training)
  reflect, methods = TRAININGS[training]
  overrides = [
      *(f"--config.{setting}" for setting in settings), f"--config.seed={seed}",
      f"--config.train.steps={steps}", *(f"--config.reflect.{k}={v}" for k, v in reflect.items())
  ]
  results_path = os.path.join(workdir, "eval", "results.json")
  if not os.path.exists(results_path):
    model_dir = workdir
    if training == "self_align":  # rounds from the `rasr` run; resumable like a training
      run_seed(seed, "rasr", steps, settings)
      _main(f"--workdir={_run_dir(seed, 'rasr')}", "--mode=self_align", *overrides,
            f"--config.self_align.output={workdir}", f"--config.self_align.rounds={ROUNDS}")
      model_dir = os.path.join(workdir, f"round_{ROUNDS}", "train")
    else:  # resumes an interrupted run; a finished one resumes at its last step, doing nothing
      _main(f"--workdir={workdir}", *overrides)
    _main(f"--workdir={model_dir}", "--mode=eval", *overrides, f"--eval_methods={methods}",
          f"--eval_tasks={','.join(_tasks())},perplexity", f"--eval_limit={_LIMIT.value}",
          f"--eval_output={os.path.join(workdir, 'eval')}", "--batch_size=32")
  with open(results_path) as f:
    return json.load(f)


def steps_right(seed, training, method):
  """--probe_only: per draft y(k), the fraction of held-out additions whose draft writes every
  column step right (what a refinement can read the sum from)."""
  path = os.path.join(_run_dir(seed, training), "eval", "samples", method, "qa.jsonl")
  with open(path) as f:
    samples = [json.loads(line) for line in f]
  reference = [probe.read_steps(s["reference"]) for s in samples]
  return [
      statistics.fmean(
          probe.read_steps(s["drafts"][k]) == want
          for s, want in zip(samples, reference)
          if len(s["drafts"]) > k)
      for k in range(max(len(s["drafts"]) for s in samples))
  ]


def _mean_auroc(report, dimension):
  """The AUROC of the critic's `dimension` against its own TrueQuality, averaged over the tasks
  that have one (None for standard runs, and for reports that judged it against correctness)."""
  judged = (report[t].get("critic_dimensions", {}).get(dimension, {}) for t in _tasks())
  values = [j["auroc"] for j in judged if j.get("target") == dimension and j["auroc"] is not None]
  return statistics.fmean(values) if values else None


def table(results):
  """Markdown: a row per (training, method); each cell mean +- 95 % half-interval over seeds."""
  header = [
      "Run", *(f"{t} acc %" for t in _tasks()), "perplexity (token)", "mean iterations",
      "wrong->right", "right->wrong", *(f"critic AUROC {d}" for d in AUROC_DIMENSIONS)
  ]
  lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
  for label, training, method in ROWS:
    if training not in results:
      continue
    per_seed = [r["methods"][method] for r in results[training]]

    def cell(values, scale=1.0, digits=1):
      values = [v * scale for v in values if v is not None]
      if not values:
        return "-"
      mean, half = mean_ci(values)
      return f"{mean:.{digits}f} ± {half:.{digits}f}"

    def total(s, key):  # summed over tasks and iterations
      return sum(sum(s[t].get(key, [])) for t in _tasks())

    cells = [cell([s[t]["accuracy"] for s in per_seed], 100) for t in _tasks()]
    cells.append(cell([s["perplexity"]["token_perplexity"] for s in per_seed], digits=3))
    cells.append(
        cell([statistics.fmean(s[t]["mean_iterations"] for t in _tasks()) for s in per_seed],
             digits=2))
    cells.append(cell([total(s, "wrong_to_right") for s in per_seed], digits=1))
    cells.append(cell([total(s, "right_to_wrong") for s in per_seed], digits=1))
    cells.extend(cell([_mean_auroc(s, d) for s in per_seed], digits=3) for d in AUROC_DIMENSIONS)
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  settings = _SET.value + _probe_settings()
  config = _config(settings)
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  trainings = _TRAININGS.value.split(",") if _TRAININGS.value else list(DEFAULT_TRAININGS)
  if set(trainings) - set(TRAININGS):
    raise app.UsageError(f"--trainings: expected some of {', '.join(TRAININGS)}")
  steps = config.train.steps
  matched, ratio = compute_matched_steps(config)
  steps_of = {"standard_compute": matched}
  results = {
      training: [
          run_seed(seed, training, steps_of.get(training, steps), settings) for seed in seeds
      ] for training in trainings
  }
  text = table(results)
  summary = {
      "config": _CONFIG.value,
      "overrides": settings,
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
  if _PROBE_ONLY.value:
    summary["steps_right_per_draft"] = {
        t: {
            m: [steps_right(seed, t, m) for seed in seeds] for m in TRAININGS[t][1].split(",")
        } for t in trainings
    }
  with open(os.path.join(_WORKDIR.value, "table.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"steps {steps}; equal compute: {matched} standard steps (RASR / standard FLOPs "
        f"{ratio:.2f})")
  print(text)
  for training, by_method in summary.get("steps_right_per_draft", {}).items():
    for method, per_seed in by_method.items():
      print(f"steps all right, {training} {method}, per draft y(k), per seed: {per_seed}")


if __name__ == "__main__":
  app.run(main)
