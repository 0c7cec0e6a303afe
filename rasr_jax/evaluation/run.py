"""`--mode=eval`: a checkpoint, a task list, inference methods -> results.json, table.md, PNGs.

Tasks:
  arithmetic, logic, facts, probe, support
                            the bundled verifiable tasks (held-out seed), scored by their checkers
  qa                        the user's held-out question/answer records (data.qa_eval_files),
                            scored by data.qa_checker
  perplexity                held-out documents (the bundled held-out seed, or data.eval_files):
                            per token of the project's tokenizer, per byte and per word
  gsm8k, truthfulqa_mc1, truthfulqa_mc2, logiqa, hellaswag, mmlu
                            lm-evaluation-harness's stock tasks over local files
                            (--benchmarks_dir; needs `pip install -e .[eval]`)
Methods (methods.py): standard, cot, self_refine, constitutional, chat, avr, rasr.
Log-likelihood tasks and perplexity do not generate, so every method has the same figure there;
they are scored once.

Per method and generative task the report has the accuracy of each draft y(k) and of the answer
given, mean iterations, wrong-to-right / right-to-wrong counts per iteration, compute (tokens
decoded per answer) and, for rasr, the critic's calibration (reliability diagram).
"""

import json
import math
import os
import tempfile

from absl import logging
from etils import epath

from rasr_jax import config as config_lib
from rasr_jax import storage, tasks
from rasr_jax.data import sources
from rasr_jax.evaluation import (
    ALL_TASKS,
    DEFAULT_METHODS,
    DEFAULT_TASKS,
    HARNESS_TASKS,
    benchmark_data,
    bundled,
    methods,
    parse_list,
    plots,
    report,
)
from rasr_jax.generation import inference
from rasr_jax.safety import labels, robustness
from rasr_jax.training import metrics as metrics_lib

BUNDLED_TASKS = tasks.TASKS
GSM8K_SCORE, GSM8K_FILTER = "exact_match", "strict-match"  # the GSM8K figure: `#### N` extracted
GSM8K_METRIC = f"{GSM8K_SCORE},{GSM8K_FILTER}"
# The source's Table 1 columns, then the bundled tasks: (header, task, metric key).
TABLE_COLUMNS = (
    ("GSM8K", "gsm8k", GSM8K_METRIC),
    ("TruthfulQA (MC2)", "truthfulqa_mc2", "acc,none"),
    ("TruthfulQA (MC1)", "truthfulqa_mc1", "acc,none"),
    ("LogiQA", "logiqa", "acc_norm,none"),
    ("HellaSwag", "hellaswag", "acc_norm,none"),
    ("MMLU", "mmlu", "acc,none"),
    ("Perplexity (token)", "perplexity", "token_perplexity"),
    *((f"{t} (bundled)", t, "accuracy") for t in BUNDLED_TASKS),
    ("qa (data.qa_eval_files)", bundled.QA_TASK, "accuracy"),
)
PERCENT = {GSM8K_METRIC, "acc,none", "acc_norm,none", "accuracy"}


def perplexity(lm, texts, tokenizer):
  """Perplexity of `texts` per token (this tokenizer), per UTF-8 byte and per word."""
  total = sum(lm.rolling_logprobs(texts))
  tokens = sum(len(tokenizer.encode(t)) for t in texts)
  nbytes = sum(len(t.encode("utf-8")) for t in texts)
  words = sum(len(t.split()) for t in texts)
  return {
      "token_perplexity": round(math.exp(-total / tokens), 4),
      "byte_perplexity": round(math.exp(-total / nbytes), 4),
      "word_perplexity": round(math.exp(-total / words), 4),
      "bits_per_byte": round(-total / nbytes / math.log(2), 4),
      "documents": len(texts),
      "tokens": tokens,
      "bytes": nbytes,
      "words": words,
      "unit": "token",
      "tokenizer": tokenizer.path,
      "tokenizer_sha256": tokenizer.checksum,
      "note": "every token predicted once, the first after the start token; windows of data.seq_len"
  }


def _label_robustness(model, items, records, seed):
  """Adds every draft's robustness label (safety/robustness.py: a perturbed question flips one
  of the critic's verdicts) to its item's safety labels, so the report's safety rates and the
  critic's AUROC cover the dimension as the training step's do."""
  prompts = [record["question"] for record in records for _ in record["drafts"]]
  drafts = [draft for record in records for draft in record["drafts"]]
  flags = iter(
      robustness.verdict_flips(model, prompts, drafts, model.config.reflect.dim_names, seed=seed))
  for item, record in zip(items, records):
    per_draft = item.setdefault("draft_safety", [{} for _ in record["drafts"]])
    for found in per_draft:
      found[config_lib.ROBUSTNESS] = float(next(flags))
    item["safety"] = per_draft[item["stop"]]


def held_out_perplexity(model, limit, *, batch_size=8, seed=0):
  """perplexity() of `model`'s first `limit` held-out documents (the bundled held-out seed, or
  data.eval_files), read by the standard pass; None when the config has none."""
  held_out = sources.load_held_out(model.config.data, model.config.seed)
  if held_out is None:
    return None
  lm = _harness().RasrLM(model, method="standard", batch_size=batch_size, seed=seed)
  return perplexity(lm, held_out.texts(limit), model.tokenizer)


class Evaluation:
  """One checkpoint's evaluation; `run()` writes everything under `out_dir`."""

  def __init__(self,
               model,
               out_dir,
               *,
               task_names,
               method_names,
               tasks_dir=None,
               limit=200,
               max_new_tokens=64,
               batch_size=8,
               seed=0,
               labeler=None):
    self.model, self.out_dir, self.tasks_dir = model, out_dir, tasks_dir
    self.labeler = labeler  # safety labels of every answer given (None: not reported)
    self.task_names, self.method_names, self.limit = task_names, method_names, limit
    self.max_new_tokens, self.batch_size, self.seed = max_new_tokens, batch_size, seed
    self.scores = {m: {} for m in method_names}  # method -> task -> {metric: value}
    self.reports = {}  # (method, task) -> iteration report

  def run(self):
    storage.makedirs(self.out_dir)
    for task in self.task_names:
      logging.info("evaluating %s", task)
      if task in BUNDLED_TASKS or task == bundled.QA_TASK:
        self._checked(task)
      elif task == "perplexity":
        scores = held_out_perplexity(self.model,
                                     self.limit,
                                     batch_size=self.batch_size,
                                     seed=self.seed)
        if scores is None:
          raise sources.DataError("perplexity needs held-out documents: set data.eval_files")
        self._same_for_all(task, scores)
      elif task == "gsm8k":
        self._gsm8k()
      else:
        self._loglikelihood_task(task)
    return self._write()

  def _lm(self, method):
    return _harness().RasrLM(self.model, method=method, batch_size=self.batch_size, seed=self.seed)

  def _same_for_all(self, task, scores):
    for method in self.method_names:
      self.scores[method][task] = scores

  def _checked(self, task):
    for method in self.method_names:
      items, records = bundled.evaluate(self.model,
                                        task,
                                        method,
                                        self.limit,
                                        max_new_tokens=self.max_new_tokens,
                                        batch_size=self.batch_size,
                                        seed=self.seed,
                                        labeler=self.labeler)
      if method == "rasr" and config_lib.ROBUSTNESS in self.model.config.reflect.dim_names:
        _label_robustness(self.model, items, records, self.seed)
      self._add_report(method, task, items, records)
      if method == "rasr":  # the critic's stability under perturbed prompts (UFARSAP)
        self.scores[method][task]["critic_robustness"] = robustness.critic_robustness(
            self.model, [r["question"] for r in records], [r["drafts"][r["stop"]] for r in records],
            seed=self.seed)
      if method == "constitutional":  # its revisions as SFT records (Constitutional AI's SL stage)
        inference.write_jsonl([{
            "prompt": r["question"],
            "completion": r["drafts"][r["stop"]]
        } for r in records if r["drafts"][r["stop"]].strip()],
                              os.path.join(self.out_dir, "samples", method, f"{task}.sft.jsonl"))

  def _add_report(self, method, task, items, records):
    self.reports[(method, task)] = report.iteration_report(items)
    self.scores[method][task] = self.reports[(method, task)]
    storage.makedirs(os.path.join(self.out_dir, "samples", method))
    inference.write_jsonl(records, os.path.join(self.out_dir, "samples", method, f"{task}.jsonl"))

  def _harness(self, lm, task):
    return _harness().evaluate_tasks(lm, [task], self.tasks_dir, limit=self.limit)

  def _loglikelihood_task(self, task):
    results, _ = self._harness(self._lm("standard"), task)
    self._same_for_all(task, _numbers(results[task]))

  def _gsm8k_samples(self, lm, task, pick):
    """(lm-eval's results, the samples of GSM8K_METRIC's filter) of `lm` answering with draft
    `pick` (None: the answer given)."""
    lm.pick = pick
    results, samples = self._harness(lm, task)
    return results[task], [s for s in samples[task] if s["filter"] == GSM8K_FILTER]

  def _gsm8k(self):
    """lm-eval's gsm8k (gsm8k_cot for `cot`) once per method; for methods with several drafts
    also each draft y(k), scored by lm-eval from the adapter's cached drafts."""
    for method in self.method_names:
      task = "gsm8k_cot" if method == "cot" else "gsm8k"
      lm = self._lm(method)
      final_results, final_samples = self._gsm8k_samples(lm, task, None)
      correct = {
          None: {
              s["doc_id"]: bool(s[GSM8K_SCORE]) for s in final_samples
          }
      }  # pick -> {doc: ok}
      # then each draft y(k) of the methods that write several (the answers are cached now)
      drafts = max((len(a.drafts) for a in lm.answers.values()), default=1)
      drafts = drafts if drafts > 1 else 0  # a single draft is the answer given
      for pick in range(drafts):
        correct[pick] = {
            s["doc_id"]: bool(s[GSM8K_SCORE]) for s in self._gsm8k_samples(lm, task, pick)[1]
        }
      items, records = [], []
      for sample in final_samples:
        answer = lm.answer_for(*sample["arguments"][0])
        doc = sample["doc_id"]
        per_draft = [correct[k][doc] for k in range(min(drafts, len(answer.drafts)))]
        per_draft = per_draft or [correct[None][doc]]
        items.append(report.item(answer, per_draft, self.labeler))
        records.append(report.sample(answer, per_draft, doc_id=doc))
      self._add_report(method, "gsm8k", items, records)
      self.scores[method]["gsm8k"].update(_numbers(final_results))

  def _write(self):
    model = self.model
    results = {
        "checkpoint_step": model.step,
        "config_seed": model.config.seed,
        "tokenizer": {
            "path": model.tokenizer.path,
            "sha256": model.tokenizer.checksum
        },
        "limit_per_task": self.limit,
        "methods": self.scores
    }
    epath.Path(self.out_dir, "results.json").write_text(json.dumps(results, indent=2))
    epath.Path(self.out_dir, "table.md").write_text(
        f"{table(self.scores)}\n\nCheckpoint step {model.step}; at most {self.limit} items per "
        "task (per subject for MMLU); accuracies in %. Log-likelihood tasks and perplexity do "
        "not generate: the same figure for every method.\n")
    results["plots"] = plots.write_all(self.out_dir, self.reports)
    return results


def _numbers(task_results):
  """The metrics of one lm-eval task result (its name and alias left out)."""
  return {k: v for k, v in task_results.items() if isinstance(v, (int, float))}


def table(scores):
  """The source's Table 1 layout: a row per method, a column per task that was run."""
  methods_run = list(scores)
  columns = [c for c in TABLE_COLUMNS if any(c[1] in scores[m] for m in methods_run)]
  lines = [
      "| Method | " + " | ".join(c[0] for c in columns) + " |", "|---|" + "---:|" * len(columns)
  ]
  for method in methods_run:
    cells = []
    for _, task, metric in columns:
      value = scores[method].get(task, {}).get(metric)
      cells.append("" if value is None else f"{100 * value:.1f}" if metric in
                   PERCENT else f"{value:.2f}")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _harness():
  """The lm-eval adapter module, imported on first use: after `prepare_benchmarks` has switched
  downloads off (lm-eval and datasets read the switches when they load)."""
  from rasr_jax.evaluation import harness
  return harness


def prepare_benchmarks(task_names, benchmarks_dir, prepared_dir):
  """The lm-eval task directory for the harness tasks among `task_names` (None without any).
  They read local files only, so downloads are switched off (before lm-eval loads)."""
  wanted = [t for t in task_names if t in HARNESS_TASKS]
  if not wanted:
    return None
  if not benchmarks_dir:
    raise config_lib.ConfigError(f"tasks {wanted} read local benchmark files: pass "
                                 "--benchmarks_dir")
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  present = benchmark_data.prepare(benchmarks_dir, prepared_dir)
  missing = [t for t in wanted if t not in present]
  if missing:
    raise sources.DataError(f"{benchmarks_dir} has no files for {missing}")
  return os.path.join(prepared_dir, benchmark_data.TASKS_DIR)


def evaluate(config,
             workdir,
             *,
             checkpoint=None,
             task_list=DEFAULT_TASKS,
             method_list=DEFAULT_METHODS,
             benchmarks_dir=None,
             limit=200,
             output_dir=None,
             max_new_tokens=64,
             batch_size=8,
             seed=0):
  """--mode=eval: returns the results dict (also written to output_dir/results.json). Names,
  limits, the qa task's files and benchmark files are checked before the checkpoint is loaded."""
  task_names = parse_list(task_list, ALL_TASKS, "tasks")
  method_names = parse_list(method_list, methods.METHODS, "methods")
  if limit < 1:
    raise config_lib.ConfigError(f"--eval_limit must be >= 1, got {limit}")
  if "constitutional" in method_names:
    methods.load_principles(config.constitutional.principles_file)  # a bad file fails here
  labeler = labels.labeler(config)  # a bad lexicon or hook fails here
  if bundled.QA_TASK in task_names and not config.data.qa_eval_files:  # (then qa_files is set)
    raise config_lib.ConfigError("--eval_tasks=qa scores data.qa_eval_files, which is empty")
  prepared_dir = os.path.join(output_dir or os.path.join(workdir, "eval"), "benchmark_data")
  if storage.is_remote(prepared_dir):  # lm-eval reads its task files locally
    prepared_dir = tempfile.mkdtemp(prefix="rasr_benchmark_data_")
  tasks_dir = prepare_benchmarks(task_names, benchmarks_dir, prepared_dir)
  model = inference.InferenceModel(config, workdir, checkpoint)
  out_dir = output_dir or os.path.join(workdir, "eval", f"step_{model.step}")
  evaluation = Evaluation(model,
                          out_dir,
                          task_names=task_names,
                          method_names=method_names,
                          tasks_dir=tasks_dir,
                          limit=limit,
                          max_new_tokens=max_new_tokens,
                          batch_size=batch_size,
                          seed=seed,
                          labeler=labeler)
  results = evaluation.run()
  trace = [r for r in metrics_lib.read_records(workdir) if "strategy/current" in r] if epath.Path(
      workdir, "metrics.jsonl").exists() else []
  if trace:  # a run with adaptive strategies: the strategy it trained with, over time
    results["plots"].append(plots.strategy_trace(os.path.join(out_dir, "strategy_trace.png"),
                                                 trace))
  results["output_dir"] = out_dir
  results["table"] = table(evaluation.scores)
  return results
