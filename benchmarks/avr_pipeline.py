"""The whole post-training pipeline of docs/posttraining.md on the tiny data, and its table.

  PYTHONPATH=. python benchmarks/avr_pipeline.py --workdir=/tmp/avr_pipeline [--prompts=256] \
      [--config=configs/small.py] [--seeds=0,1,2]

Runs, for each seed, as subprocesses of `python -m rasr_jax.main` (a finished step is reused: every
mode resumes, and an evaluation whose results.json exists is read back): pretraining (--config,
default configs/tiny.py, RASR on); an SFT-only model fine-tuned on the bundled tasks' own
question/answer records as conversations; AvR Stage I (trees of the pretrained model, RSFT, DPO);
AvR Stage II (search with the Stage I model, SFT on the long answers, pairs of that model's final
answers, DPO). Then `--mode=eval` on the bundled tasks: the pretrained model with standard, cot,
self_refine, constitutional and rasr, the SFT-only and Stage I models with `chat`, the Stage II
model with `avr`. Prints one JSON object: per seed each stage's summary, each fine-tuning's last
metrics, the wall time of every step and the table; then each row's mean over the seeds with the
half-width of its 95 % t-interval. Not in CI.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from common import load_config, mean_ci
from rasr_jax import tasks
from rasr_jax.data import qa

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of every run.", required=True)
_CONFIG = flags.DEFINE_string("config", "configs/tiny.py", "The config file of every run.")
_SEEDS = flags.DEFINE_string("seeds", "0", "Comma-separated seeds (config.seed).")
_PROMPTS = flags.DEFINE_integer("prompts", 256, "AvR prompts per stage.")
_STEPS = flags.DEFINE_integer("steps", 100, "Steps of each SFT and DPO run.")
_LIMIT = flags.DEFINE_integer("eval_limit", 100, "Items per task in the evaluation.")
_SEQ_LEN = 512  # rows long enough for a refinement conversation of the bundled tasks
EVAL_TASKS = ",".join(tasks.TASKS)  # the table has a column for each


def _main(workdir, *settings, mode="train", extra=()):
  """Runs one mode; returns its stdout and wall seconds."""
  cmd = [
      sys.executable, "-m", "rasr_jax.main", f"--config={os.path.join(REPO, _CONFIG.value)}",
      f"--workdir={workdir}", f"--mode={mode}", *(f"--config.{s}" for s in settings), *extra
  ]
  print("+", " ".join(cmd[2:]), flush=True)
  start = time.monotonic()
  out = subprocess.run(cmd,
                       cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO),
                       check=True,
                       stdout=subprocess.PIPE,
                       text=True).stdout
  return out, round(time.monotonic() - start, 1)


def _last_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = json.loads(f.read().splitlines()[-1])
  return {k: round(v, 4) for k, v in last.items() if k.startswith(("loss", "eval/", "rewards/"))}


def _sft_only_records(path, count, seed):
  """The bundled tasks' training question/answer records as conversations (the SFT-only row:
  fine-tuned on the answers themselves, no refinement)."""
  records = qa.load(load_config(os.path.join(REPO, _CONFIG.value), []).data, seed=seed)[:count]
  with open(path, "w") as f:
    for r in records:
      f.write(
          json.dumps({
              "messages": [{
                  "role": "user",
                  "content": r.prompt
              }, {
                  "role": "assistant",
                  "content": r.answer
              }]
          }) + "\n")


def run_seed(root, seed):
  """The pipeline of one seed in `root`: (stage summaries, fine-tuning metrics, seconds per
  step, {row: {task: accuracy %}})."""
  os.makedirs(root, exist_ok=True)
  seq = (f"data.seq_len={_SEQ_LEN}", f"seed={seed}")
  steps = f"train.steps={_STEPS.value}"
  prompts = f"avr.num_prompts={_PROMPTS.value}"
  dirs = {
      name: os.path.join(root, name)
      for name in ("pretrain", "sft_only", "avr1_sft", "avr1", "avr2_sft", "avr2")
  }
  times, summaries, metrics = {}, {}, {}
  _, times["pretrain"] = _main(dirs["pretrain"], f"seed={seed}")

  sft_only_data = os.path.join(root, "sft_only.jsonl")
  _sft_only_records(sft_only_data, _PROMPTS.value * 8, seed)
  _, times["sft_only"] = _main(dirs["sft_only"],
                               *seq,
                               steps,
                               f"sft.files={sft_only_data}",
                               f"init_from={dirs['pretrain']}",
                               mode="sft")

  out, times["avr_trees"] = _main(dirs["pretrain"], *seq, prompts, mode="avr_data")
  summaries["trees"] = json.loads(out)
  trees = summaries["trees"]["output"]
  if summaries["trees"]["rsft_records"] and sum(summaries["trees"]["pairs"].values()):
    _, times["avr1_sft"] = _main(dirs["avr1_sft"],
                                 *seq,
                                 steps,
                                 f"sft.files={trees}/rsft.jsonl",
                                 f"init_from={dirs['pretrain']}",
                                 mode="sft")
    _, times["avr1_dpo"] = _main(dirs["avr1"],
                                 *seq,
                                 steps,
                                 f"dpo.files={trees}/pairs.jsonl",
                                 f"init_from={dirs['avr1_sft']}",
                                 mode="dpo")
    metrics["avr1_dpo"] = _last_metrics(dirs["avr1"])
    out, times["avr_search"] = _main(dirs["avr1"],
                                     *seq,
                                     prompts,
                                     "avr.stage=search",
                                     mode="avr_data")
    summaries["search"] = json.loads(out)
  for name in ("sft_only", "avr1_sft"):
    if os.path.exists(dirs[name]):
      metrics[name] = _last_metrics(dirs[name])
  if summaries.get("search", {}).get("sft_records"):
    _, times["avr2_sft"] = _main(dirs["avr2_sft"],
                                 *seq,
                                 steps,
                                 f"sft.files={summaries['search']['output']}/sft.jsonl",
                                 f"init_from={dirs['avr1']}",
                                 mode="sft")
    out, times["avr_final_pairs"] = _main(dirs["avr2_sft"],
                                          *seq,
                                          prompts,
                                          "avr.stage=final_pairs",
                                          mode="avr_data")
    summaries["final_pairs"] = json.loads(out)
    if summaries["final_pairs"]["pairs"] >= 16:
      _, times["avr2_dpo"] = _main(dirs["avr2"],
                                   *seq,
                                   steps,
                                   f"dpo.files={summaries['final_pairs']['output']}/pairs.jsonl",
                                   f"init_from={dirs['avr2_sft']}",
                                   mode="dpo")
      metrics["avr2_dpo"] = _last_metrics(dirs["avr2"])

  rows = {
      "pretrain": "standard,cot,self_refine,constitutional,rasr",
      "sft_only": "chat",
      "avr1": "chat",
      "avr2": "avr" if os.path.exists(dirs["avr2"]) else None
  }
  if not os.path.exists(dirs["avr2"]) and os.path.exists(dirs["avr2_sft"]):
    rows["avr2_sft"] = "avr"
  table = {}
  for name, method_list in rows.items():
    if not method_list or not os.path.exists(dirs[name]):
      continue
    output = os.path.join(dirs[name], "eval_pipeline")
    if os.path.exists(os.path.join(output, "results.json")):  # a finished evaluation is reused
      with open(os.path.join(output, "results.json")) as f:
        out = f.read()
    else:
      out, times[f"eval_{name}"] = _main(
          dirs[name],
          *seq,
          mode="eval",
          extra=(f"--eval_tasks={EVAL_TASKS}", f"--eval_methods={method_list}",
                 f"--eval_limit={_LIMIT.value}", f"--eval_output={output}"))
    results = json.loads(out)["methods"]
    for method, by_task in results.items():
      table[f"{name} / {method}"] = {
          task: round(100 * by_task[task]["accuracy"], 1) for task in tasks.TASKS
      }
  return summaries, metrics, times, table


def main(argv):
  del argv
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  runs = {seed: run_seed(os.path.join(_WORKDIR.value, f"seed_{seed}"), seed) for seed in seeds}
  rows = sorted({row for run in runs.values() for row in run[3]})
  summary = {
      row: {
          task: [round(x, 1)
                 for x in mean_ci([runs[s][3][row][task]
                                   for s in seeds])]
          for task in tasks.TASKS
      } for row in rows if all(row in runs[s][3] for s in seeds)
  }
  print(
      json.dumps(
          {
              "benchmark": "avr_pipeline",
              "config": _CONFIG.value,
              "seeds": seeds,
              "prompts": _PROMPTS.value,
              "steps": _STEPS.value,
              "eval_limit": _LIMIT.value,
              "per_seed": {
                  seed: {
                      "summaries": run[0],
                      "metrics": run[1],
                      "seconds": run[2],
                      "accuracy_percent": run[3]
                  } for seed, run in runs.items()
              },
              "accuracy_percent_mean_and_ci95": summary
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
