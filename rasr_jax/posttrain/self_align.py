"""`--mode=self_align`: autonomous self-alignment rounds (seed 002; design/EXTENSIONS.md).

Round r = 1..R starts from model r-1 (model 0: the checkpoint in --workdir, or --checkpoint):
1. prompts: `self_align.prompts` of them from the templates of `self_align.tasks`; a share
   `self_align.self_written` written by the model itself (it continues the opening third of a
   fresh template question to the end of the line), the rest fresh instances of the templates,
   whose answers the task's checker knows; no prompt is a question of the held-out evaluation;
2. samples: `self_align.samples` responses per prompt, sampled at `temperature` / `top_p`;
3. self-ranking: reward = the checker (1 right, 0 wrong; a prompt the model wrote has none)
   + the critic's weighted score of the response read as a draft (model 0's critic: SFT drops
   the heads, so the judge stays the starting model; 0 when it has none) - the number of safety
   labels that fire (safety/labels.py); the best response of each prompt is kept;
4. SFT (posttrain/sft.py) of model r-1 on the kept responses, `self_align.sft_steps` steps at
   a peak learning rate of train.lr x `self_align.lr_ratio`: model r;
5. report: model r's held-out accuracy and safety-label rates on every task (greedy, the items
   of --mode=eval), its perplexity of the held-out documents (what SFT on short answers can make
   it forget), and the round's rewards, safety-label rates and the diversity of its
   samples (evaluation/diversity.py: distinct n-grams, self-BLEU), which describe model r-1.
No RL and no human label. Files under `self_align.output` (default WORKDIR/self_align):
meta.json (what the rounds are of), initial.json (model 0's held-out figures), per round
round_N/{samples.jsonl, sft.jsonl, train/ (the SFT run), report.json}, and summary.json. A killed
run rerun with the same command keeps what is written (a round with a report, a round's
samples, the SFT run's checkpoints); a folder holding rounds of other settings is refused.
"""

import dataclasses
import json
import math
import os

import jax
import numpy as np
from absl import logging
from etils import epath

from rasr_jax import config as config_lib
from rasr_jax import distributed, storage, tasks
from rasr_jax.data import sources
from rasr_jax.evaluation import bundled, diversity
from rasr_jax.evaluation import run as evaluation
from rasr_jax.generation import inference
from rasr_jax.posttrain import avr, sft
from rasr_jax.safety import labels
from rasr_jax.training import checkpoint as ckpt_lib
from rasr_jax.training import metrics as metrics_lib

SEED_OFFSET = 3_000_017  # round r's prompts and samples: config.seed + SEED_OFFSET + ROUND_STRIDE r
ROUND_STRIDE = 7919
SEED_SHARE = 1 / 3  # of a template question's words, the opening a written question starts from
TEMPLATE, SELF_WRITTEN = "template", "self_written"


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A prompt of a round: its task, where it came from, and the reference answer (None for a
  prompt the model wrote)."""
  task: str
  source: str  # TEMPLATE or SELF_WRITTEN
  text: str
  answer: str | None
  world_seed: int  # the facts world its facts (if any) are of, for the misinformation label


class Rounds:
  """The rounds of one self-alignment run: where each model and file is."""

  def __init__(self, config, workdir, checkpoint):
    self.config, self.workdir, self.checkpoint = config, workdir, checkpoint
    self.cfg = config.self_align
    self.output = self.cfg.output or os.path.join(workdir, "self_align")
    self.writer = jax.process_index() == 0  # every process computes the same records

  def folder(self, r):
    return os.path.join(self.output, f"round_{r}")

  def start(self):
    """What config.init_from names for model 0: --checkpoint, else the work directory (its
    checkpoints, or its imported parameters)."""
    if self.checkpoint:
      return self.checkpoint
    if epath.Path(ckpt_lib.checkpoint_dir(self.workdir)).is_dir():
      return self.workdir
    return ckpt_lib.imported_params_dir(self.workdir)

  def model(self, r):
    """Model r (an InferenceModel): model 0 is the starting checkpoint, model r the last
    checkpoint of round r's SFT run."""
    if r == 0:
      return inference.InferenceModel(self.config, self.workdir, self.checkpoint)
    return inference.InferenceModel(self.config, os.path.join(self.folder(r), "train"))

  def init_from(self, r):
    """config.init_from of round r's SFT run: model r-1."""
    return self.start() if r == 1 else os.path.join(self.folder(r - 1), "train")


def _read_json(path):
  return json.loads(epath.Path(path).read_text())


def _write_json(path, value, writer):
  if writer:
    storage.write_atomically(path, json.dumps(value, indent=2).encode())


def _read_jsonl(path):
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines()]


def _round_seed(config, r):
  return config.seed + SEED_OFFSET + ROUND_STRIDE * r


def held_out_questions(config) -> set:
  """The questions of the held-out evaluation of every round (no prompt may be one)."""
  cfg = config.self_align
  return {
      ex.question
      for t in cfg.task_names
      for ex in bundled.held_out_examples(config, t, cfg.eval_items)
  }


def template_prompts(config, r, count, held_out) -> list[Prompt]:
  """`count` fresh template instances, spread over the tasks in turn, none a question of
  `held_out` (the held-out evaluation's)."""
  cfg = config.self_align
  seed = _round_seed(config, r)
  pools = {
      t: [ex for ex in tasks.generate(t, seed, 2 * count + 8) if ex.question not in held_out]
      for t in cfg.task_names
  }
  prompts = []
  for i in range(count):
    task = cfg.task_names[i % len(cfg.task_names)]
    example = pools[task][i // len(cfg.task_names)]
    prompts.append(Prompt(task, TEMPLATE, example.question, example.answer, seed))
  return prompts


def written_prompts(model, config, r, count, held_out) -> tuple[list[Prompt], int]:
  """(prompts, how many attempts were dropped): the model writes each question from the
  opening of a fresh template question (its first third of words, SEED_SHARE; the tasks in
  turn), continuing it to the end of the line; a question the model added nothing to, the
  template's own question, a held-out question or a repeat is dropped."""
  cfg = config.self_align
  if not count:
    return [], 0
  seed = _round_seed(config, r) + 1
  task_of = [cfg.task_names[i % len(cfg.task_names)] for i in range(count)]
  templates = {t: tasks.generate(t, seed, count) for t in cfg.task_names}
  openings, originals = [], []
  for i, t in enumerate(task_of):
    question = templates[t][i].question
    words = question.split()
    openings.append(" ".join(words[:max(1, math.ceil(len(words) * SEED_SHARE))]))
    originals.append(question)
  options = model.options(max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature,
                          top_p=cfg.top_p,
                          stop=("\n",),
                          reflect="off")
  prompts, seen = [], set()
  for t, opening, original, record in zip(task_of, openings, originals,
                                          model.generate(openings, options, seed=seed)):
    question = (opening + record["text"]).strip()
    if record["text"].strip() and question not in {original} | held_out | seen:
      prompts.append(Prompt(t, SELF_WRITTEN, question, None, seed))  # the template's world
      seen.add(question)
  return prompts, count - len(prompts)


def sample_responses(model, prompts, cfg, seed) -> list[list[str]]:
  """`cfg.samples` sampled responses per prompt (reflection off)."""
  options = model.options(max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature,
                          top_p=cfg.top_p,
                          reflect="off")
  texts = [p.text for p in prompts] * cfg.samples  # sample j of prompt i at j * P + i
  records = model.generate(texts, options, seed=seed)
  return [[records[j * len(prompts) + i]["text"]
           for j in range(cfg.samples)]
          for i in range(len(prompts))]


def rank(prompts, responses, critic, labeler) -> list[dict]:
  """One record per (prompt, response) with its checker verdict, critic score, safety labels,
  reward and whether it is its prompt's best (`kept`: the highest reward, the first on a tie,
  among the responses that are not empty). `critic(prompts, responses)` -> scores, or None."""
  flat = [(p, text) for p, texts in zip(prompts, responses) for text in texts]
  scores = critic([p.text for p, _ in flat], [t for _, t in flat]) if critic else None
  records = []
  for index, (p, text) in enumerate(flat):
    right = (tasks.answer_is_right(tasks.TASK_CHECKERS[p.task], p.answer, text)
             if p.answer is not None else None)
    safety = labeler(text, world_seed=p.world_seed)
    critic_score = None if scores is None else float(scores[index])
    reward = float(right or 0) + (critic_score or 0.0) - sum(safety.values())
    records.append({
        **dataclasses.asdict(p), "response": text,
        "right": right,
        "critic": critic_score,
        "safety": safety,
        "reward": reward,
        "kept": False
    })
  per_prompt = len(responses[0]) if responses else 0
  for start in range(0, len(records), per_prompt):
    group = [r for r in records[start:start + per_prompt] if avr.usable(r["response"])]
    if group:
      max(group, key=lambda r: r["reward"])["kept"] = True
  return records


def sft_records(records, rows: avr.Rows) -> tuple[list[dict], int]:
  """(the kept responses as prompt + completion records, less those longer than a row; how
  many were left out for that)."""
  return rows.keep([{
      "prompt": r["text"],
      "completion": r["response"]
  } for r in records if r["kept"]])


def _rates(safety_labels):
  """{dimension: mean label} of a list of {dimension: label}."""
  if not safety_labels:
    return {}
  return {d: float(np.mean([s[d] for s in safety_labels])) for d in safety_labels[0]}


def held_out(model, config, labeler) -> dict:
  """Model's greedy held-out accuracy and answers' safety-label rates per task (the items and
  prompts of --mode=eval's `standard` method), and its token perplexity of `eval_items` held-out
  documents (None without held-out documents: data.source=files and no data.eval_files)."""
  cfg = config.self_align
  accuracy, safety = {}, {}
  for t in cfg.task_names:
    items, _ = bundled.evaluate(model,
                                t,
                                "standard",
                                cfg.eval_items,
                                max_new_tokens=cfg.max_new_tokens,
                                batch_size=8,
                                seed=config.seed,
                                labeler=labeler)
    accuracy[t] = float(np.mean([it["correct"][it["stop"]] for it in items])) if items else 0.0
    safety[t] = _rates([it["safety"] for it in items])
  documents = evaluation.held_out_perplexity(model, cfg.eval_items, seed=config.seed)
  return {
      "held_out_accuracy": accuracy,
      "held_out_safety_rates": safety,
      "held_out_perplexity": None if documents is None else documents["token_perplexity"]
  }


def _sample_summary(records, dropped, too_long) -> dict:
  """A round's figures from its ranked records (`too_long`: kept ones longer than a row)."""
  kept = [r for r in records if r["kept"]]
  checked = [r for r in records if r["right"] is not None]
  critic = [r["critic"] for r in records if r["critic"] is not None]
  groups = {}
  for r in records:
    groups.setdefault((r["source"], r["text"]), []).append(r["response"])
  return {
      "prompts": {
          TEMPLATE: len({k for k in groups if k[0] == TEMPLATE}),
          SELF_WRITTEN: len({k for k in groups if k[0] == SELF_WRITTEN}),
          "self_written_dropped": dropped
      },
      "samples": len(records),
      "empty_samples": sum(not avr.usable(r["response"]) for r in records),
      "kept": len(kept) - too_long,
      "too_long": too_long,
      "top_reward": float(np.mean([r["reward"] for r in kept])) if kept else None,
      "mean_reward": float(np.mean([r["reward"] for r in records])) if records else None,
      "top_right": (float(np.mean([r["right"] for r in kept if r["right"] is not None])) if any(
          r["right"] is not None for r in kept) else None),
      "right": float(np.mean([r["right"] for r in checked])) if checked else None,
      "mean_critic": float(np.mean(critic)) if critic else None,
      "safety_rates": _rates([r["safety"] for r in records]),
      "diversity": diversity.report(list(groups.values()))
  }


def _identity(config, rounds: Rounds) -> dict:
  return {
      "self_align": {
          k: v
          for k, v in dataclasses.asdict(config.self_align).items()
          if k not in ("output", "rounds")  # more rounds continue the same run
      },
      "seed": config.seed,
      "start": storage.absolute(rounds.start()),
      "train": dataclasses.asdict(config.train),
      "safety": dataclasses.asdict(config.safety)
  }


def _claim(rounds: Rounds, identity):
  """Makes the output folder this run's; ConfigError when it holds rounds of other settings."""
  meta = epath.Path(rounds.output, "meta.json")
  if meta.exists():
    if json.loads(meta.read_text()) != identity:
      raise config_lib.ConfigError(
          f"self_align: {rounds.output} holds rounds of other settings (its meta.json); set "
          "config.self_align.output to another folder, or remove that one")
    return
  if rounds.writer:
    storage.makedirs(rounds.output)
    storage.write_atomically(str(meta), json.dumps(identity, indent=2).encode())


def _sample_round(rounds: Rounds, r, labeler):
  """Round r's prompts, samples and ranking (samples.jsonl, sft.jsonl, sampling.json)."""
  config, cfg = rounds.config, rounds.cfg
  policy = rounds.model(r - 1)
  n_written = round(cfg.prompts * cfg.self_written)
  held_out = held_out_questions(config)
  written, dropped = written_prompts(policy, config, r, n_written, held_out)
  prompts = template_prompts(config, r, cfg.prompts - n_written, held_out) + written
  if not prompts:
    raise sources.DataError(f"self_align round {r}: no prompt (the model wrote none that could "
                            "be kept, and self_align.self_written leaves no template prompt)")
  responses = sample_responses(policy, prompts, cfg, _round_seed(config, r) + 2)
  rows = avr.Rows(policy.tokenizer, config.data.seq_len + 1)
  judge = policy if r == 1 else None
  del policy  # model r-1 and the judge are not held together
  judge = judge or rounds.model(0)
  critic = judge.critic_scores if judge.config.reflect.enabled else None
  if critic is None:
    logging.warning("self_align: the starting model has no critic heads; rewards are the "
                    "checker's and the safety labels'")
  records = rank(prompts, responses, critic, labeler)
  del judge
  folder = rounds.folder(r)
  if rounds.writer:
    storage.makedirs(folder)
    sft, too_long = sft_records(records, rows)
    avr.write_jsonl(os.path.join(folder, "sft.jsonl"), sft)
    _write_json(os.path.join(folder, "sampling.json"), _sample_summary(records, dropped, too_long),
                True)
    avr.write_jsonl(os.path.join(folder, "samples.jsonl"), records)  # last: the phase is done
  distributed.sync(f"self_align round {r} samples")


def _sft_config(rounds: Rounds, r):
  config, cfg = rounds.config, rounds.cfg
  return dataclasses.replace(
      config,
      init_from=rounds.init_from(r),
      sft=config_lib.SFTConfig(files=os.path.join(rounds.folder(r), "sft.jsonl"), eval_files=""),
      train=dataclasses.replace(config.train,
                                steps=cfg.sft_steps,
                                lr=config.train.lr * cfg.lr_ratio,
                                warmup_steps=min(config.train.warmup_steps, cfg.sft_steps // 10)))


def _losses(workdir):
  return [r["loss"] for r in metrics_lib.read_records(workdir)]


def run(config, workdir, checkpoint=None) -> dict:
  """Runs (or resumes) `self_align.rounds` rounds from the checkpoint in `workdir`; returns
  the summary (also written as summary.json)."""
  rounds = Rounds(config, workdir, checkpoint)
  labeler = labels.labeler(config)  # a bad lexicon or hook fails before any model loads
  _claim(rounds, _identity(config, rounds))
  initial_path = os.path.join(rounds.output, "initial.json")
  if not epath.Path(initial_path).exists():
    _write_json(initial_path, held_out(rounds.model(0), config, labeler), rounds.writer)
    distributed.sync("self_align initial")
  reports = []
  for r in range(1, rounds.cfg.rounds + 1):
    folder = rounds.folder(r)
    report_path = os.path.join(folder, "report.json")
    if epath.Path(report_path).exists():
      logging.info("self_align: round %d is done", r)
      reports.append(_read_json(report_path))
      continue
    if not epath.Path(folder, "samples.jsonl").exists():
      logging.info("self_align: round %d: prompts, samples, ranking", r)
      _sample_round(rounds, r, labeler)
    kept = _read_jsonl(os.path.join(folder, "sft.jsonl"))
    if not kept:
      raise sources.DataError(f"self_align round {r}: no response to learn from (every sample "
                              "was empty or longer than a row)")
    logging.info("self_align: round %d: SFT on %d kept responses", r, len(kept))
    train_dir = os.path.join(folder, "train")
    sft.train(_sft_config(rounds, r), train_dir)
    losses = _losses(train_dir)
    report = {
        "round": r,
        **_read_json(os.path.join(folder, "sampling.json")), "sft": {
            "examples": len(kept),
            "steps": rounds.cfg.sft_steps,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None
        },
        **held_out(rounds.model(r), config, labeler)
    }
    _write_json(report_path, report, rounds.writer)
    distributed.sync(f"self_align round {r} report")
    reports.append(report)
  summary = {"output": rounds.output, "initial": _read_json(initial_path), "rounds": reports}
  _write_json(os.path.join(rounds.output, "summary.json"), summary, rounds.writer)
  return summary
