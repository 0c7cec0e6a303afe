"""The public benchmark files in the layout lm-eval's stock tasks read, and task YAMLs over them.

`prepare(source_dir, out_dir)` converts the files as they are published (the layout of
`shared/data/benchmarks`: GSM8K jsonl, TruthfulQA v0 `mc_task.json`, LogiQA `Test.txt`, the
HellaSwag text dump, MMLU csvs) into JSON lines with the fields of the HuggingFace datasets the
stock task YAMLs load, and writes one YAML per task that `include:`s the stock YAML and overrides
only where the data comes from. lm-eval then prompts and scores exactly as it does for everyone.

Only the benchmarks whose files are present are prepared; `prepare` returns their names.
"""

import bz2
import csv
import json
import os

import yaml

from rasr_jax.data import sources
from rasr_jax.generation import inference

# Task -> the stock YAML it inherits (relative to lm_eval/tasks).
STOCK_YAML = {
    "gsm8k": "gsm8k/gsm8k.yaml",
    "gsm8k_cot": "gsm8k/gsm8k-cot.yaml",
    "truthfulqa_mc1": "truthfulqa/truthfulqa_mc1.yaml",
    "truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml",
    "logiqa": "logiqa/logiqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
}
MMLU_STOCK_DIR = "mmlu/default"
MMLU_FEWSHOT = 5  # the standard figure: the first 5 dev items (the stock YAML leaves it to flags)
# Stock splits with no published file here (the tasks read none of them: 0-shot, no few-shot).
SPLITS_NOT_PUBLISHED = {
    "logiqa": {
        "training_split": None,
        "validation_split": None
    },
    "hellaswag": {
        "training_split": None
    }
}
TASKS_DIR = "tasks"  # under the prepared directory


class BenchmarkDataError(sources.DataError):
  """A benchmark file is missing or not in its published format."""


def _write_jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  inference.write_jsonl(rows, path)
  return path


def _read_text(path):
  opener = bz2.open if path.endswith(".bz2") else open
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      return f.read()
  except (UnicodeDecodeError, OSError, EOFError) as e:
    raise BenchmarkDataError(f"cannot read {path}: {e}") from None


def _gsm8k(src, out):
  files = {}
  for split in ("train", "test"):
    rows = [
        json.loads(line)
        for line in _read_text(os.path.join(src, f"{split}.jsonl")).splitlines()
        if line.strip()
    ]
    if any(not {"question", "answer"} <= set(r) for r in rows):
      raise BenchmarkDataError(f"{src}/{split}.jsonl: every line needs question and answer")
    files[split] = _write_jsonl(os.path.join(out, f"{split}.jsonl"), ({
        "question": r["question"],
        "answer": r["answer"]
    } for r in rows))
  return {"gsm8k": files, "gsm8k_cot": files}


def _truthfulqa(src, out):
  items = json.loads(_read_text(os.path.join(src, "v0", "mc_task.json")))

  def targets(answers):  # {answer: 0/1} -> the HF layout, in the same order
    return {"choices": list(answers), "labels": [int(v) for v in answers.values()]}

  rows = ({
      "question": it["question"],
      "mc1_targets": targets(it["mc1_targets"]),
      "mc2_targets": targets(it["mc2_targets"])
  } for it in items)
  files = {"validation": _write_jsonl(os.path.join(out, "validation.jsonl"), rows)}
  return {"truthfulqa_mc1": files, "truthfulqa_mc2": files}


def _logiqa_rows(text, path):
  """The records of a LogiQA text file, parsed as the original EleutherAI loader did."""

  def normalize(s):
    return s.replace(".", ". ").strip()

  rows = []
  for record in text.strip().split("\n\n"):
    lines = record.split("\n")
    if len(lines) != 7 or lines[0].strip() not in ("a", "b", "c", "d"):
      raise BenchmarkDataError(f"{path}: record {len(rows)} is not 'letter, context, question, "
                               "4 options'")
    rows.append({
        "label": lines[0].strip(),
        "context": normalize(lines[1]),
        "question": normalize(lines[2]),
        "options": [normalize(o[2:]) for o in lines[3:]]
    })
  return rows


def _logiqa(src, out):
  path = os.path.join(src, "Test.txt")
  files = {
      "test": _write_jsonl(os.path.join(out, "test.jsonl"), _logiqa_rows(_read_text(path), path))
  }
  return {"logiqa": files}


def _hellaswag(src, out):
  """The 6-lines-per-item dump: `label: context`, gold index, 4 endings. The context is kept
  whole in ctx_a (the dump does not split ctx_a / ctx_b), so lm-eval's query is
  `activity_label: context` without its capitalisation of ctx_b (see the README)."""
  path = os.path.join(src, "hellaswag_val_full.txt.bz2")
  lines = _read_text(path).split("\n")
  while lines and not lines[-1]:
    lines.pop()
  if not lines or len(lines) % 6:
    raise BenchmarkDataError(f"{path}: expected 6 lines per item, got {len(lines)} lines")
  rows = []
  for i in range(0, len(lines), 6):
    label, _, context = lines[i].partition(": ")
    if not lines[i + 1].strip().isdigit():
      raise BenchmarkDataError(f"{path}: line {i + 2} is not a gold index")
    rows.append({
        "activity_label": label,
        "ctx_a": context,
        "ctx_b": "",
        "endings": lines[i + 2:i + 6],
        "label": lines[i + 1].strip()
    })
  return {"hellaswag": {"validation": _write_jsonl(os.path.join(out, "validation.jsonl"), rows)}}


def _mmlu_rows(path, subject):
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)  # every cell stays a string ("None", "0" are answers too)
    expected = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    if reader.fieldnames != expected:
      raise BenchmarkDataError(f"{path}: header must be {','.join(expected)}")
    return [{
        "question": r["question"],
        "subject": subject,
        "choices": [r[f"choice{i}"] for i in range(4)],
        "answer": int(r["answer"])
    } for r in reader]


def _mmlu(src, out):
  subjects = sorted(f[:-len("_test.csv")]
                    for f in os.listdir(os.path.join(src, "test"))
                    if f.endswith("_test.csv"))
  if not subjects:
    raise BenchmarkDataError(f"{src}/test has no <subject>_test.csv files")
  stock = os.path.join(_stock_tasks_dir(), MMLU_STOCK_DIR)
  unknown = [s for s in subjects if not os.path.exists(os.path.join(stock, f"mmlu_{s}.yaml"))]
  if unknown:
    raise BenchmarkDataError(f"{src}/test: {unknown} are not MMLU subjects")
  tasks = {}
  for subject in subjects:
    tasks[f"mmlu_{subject}"] = {
        split:
            _write_jsonl(os.path.join(out, split, f"{subject}.jsonl"),
                         _mmlu_rows(os.path.join(src, split, f"{subject}_{split}.csv"), subject))
        for split in ("dev", "test")
    }
  return tasks


_CONVERTERS = {
    "gsm8k": _gsm8k,
    "truthfulqa": _truthfulqa,
    "logiqa": _logiqa,
    "hellaswag": _hellaswag,
    "mmlu": _mmlu
}


def _stock_tasks_dir():
  import lm_eval.tasks
  return os.path.dirname(lm_eval.tasks.__file__)


def _task_yaml(name, data_files):
  stock = _stock_tasks_dir()
  if name.startswith("mmlu_"):
    include = os.path.join(stock, MMLU_STOCK_DIR, f"{name}.yaml")
  else:
    include = os.path.join(stock, STOCK_YAML[name])
  config = {
      "include": include,
      "task": name,
      "dataset_path": "json",
      "dataset_name": None,
      "dataset_kwargs": {
          "data_files": data_files
      }
  }
  config.update(SPLITS_NOT_PUBLISHED.get(name, {}))
  if name.startswith("mmlu_"):
    config["num_fewshot"] = MMLU_FEWSHOT
  return config


def prepare(source_dir, out_dir):
  """Converts every benchmark present under `source_dir`; returns the task names written."""
  if not os.path.isdir(source_dir):
    raise BenchmarkDataError(f"benchmarks directory {source_dir} does not exist")
  tasks = {}
  for folder, convert in _CONVERTERS.items():
    if os.path.isdir(os.path.join(source_dir, folder)):
      tasks.update(convert(os.path.join(source_dir, folder), os.path.join(out_dir, folder)))
  if not tasks:
    raise BenchmarkDataError(f"no benchmark folders ({', '.join(_CONVERTERS)}) in {source_dir}")
  tasks_dir = os.path.join(out_dir, TASKS_DIR)
  os.makedirs(tasks_dir, exist_ok=True)
  for name, files in tasks.items():
    with open(os.path.join(tasks_dir, f"{name}.yaml"), "w", encoding="utf-8") as f:
      yaml.safe_dump(_task_yaml(name, files), f, sort_keys=False)
  mmlu = sorted(n for n in tasks if n.startswith("mmlu_"))
  if mmlu:  # the overall figure: a micro-average over every question
    with open(os.path.join(tasks_dir, "mmlu.yaml"), "w", encoding="utf-8") as f:
      yaml.safe_dump(
          {
              "group": "mmlu",
              "task": mmlu,
              "aggregate_metric_list": [{
                  "metric": "acc",
                  "aggregation": "mean",
                  "weight_by_size": True
              }],
              "metadata": {
                  "version": 2
              }
          },
          f,
          sort_keys=False)
  return sorted(tasks) + (["mmlu"] if mmlu else [])
