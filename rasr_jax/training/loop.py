"""Training: `setup` restores or initialises everything a run needs; `loop` runs the steps.

Rerunning with the same workdir resumes from the newest complete checkpoint. SIGTERM saves a
checkpoint at the next step boundary (on several processes, at a step all of them agree on) and
returns normally (exit code 0).
"""

import dataclasses
import functools
import os
import signal
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from rasr_jax import config as config_lib
from rasr_jax import progress, sharding, storage
from rasr_jax.data import pipeline, qa, sources
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.data.packing import PackedRows
from rasr_jax.model import attention
from rasr_jax.reflection.rows import ReflectRows
from rasr_jax.training import checkpoint as ckpt_lib
from rasr_jax.training import faults as faults_lib
from rasr_jax.training import flops, memory_fit, optim, safety_quality, train_state
from rasr_jax.training import metrics as metrics_lib
from rasr_jax.training import step as train_step

HELD_OUT_KEY_OFFSET = 7_919
STRATEGY_KEY_OFFSET = 104_729  # the strategies' look-ahead passes: seed + this, then the step


class NonFiniteError(RuntimeError):
  """The loss or gradients were not finite and train.nan_policy=stop."""


def _train_tokenizer(config, corpus):
  return tok_lib.train(corpus.texts(config.data.tokenizer_sample_docs), config.model.vocab_size)


def prepare_tokenizer(config, workdir, corpus, initial=None):
  """The workdir's tokenizer, else config.data.tokenizer, else that of the training run whose
  checkpoint `initial` (InitialParams of config.init_from) is, else one trained on the corpus.

  In a multi-process run process 0 trains and saves it; the others wait, then load it.
  """
  configured = config.data.tokenizer
  if not configured and initial is not None and initial.workdir:
    configured = tok_lib.find_in(initial.workdir) or ""
  if jax.process_count() > 1 and not configured:  # every process reaches the barrier
    if jax.process_index() == 0 and tok_lib.find_in(workdir) is None:
      trained = _train_tokenizer(config, corpus)
      trained.save(tok_lib.workdir_path(workdir, trained))
    multihost_utils.sync_global_devices("tokenizer ready")
  tokenizer = (tok_lib.existing(workdir, configured, config.model.vocab_size)
               or _train_tokenizer(config, corpus))
  if tokenizer.vocab_size > config.model.vocab_size:
    raise tok_lib.TokenizerError(
        f"tokenizer {tokenizer.path}: {tokenizer.vocab_size} pieces exceed "
        f"config.model.vocab_size={config.model.vocab_size}")
  own = tok_lib.workdir_path(workdir, tokenizer)
  if not epath.Path(own).exists() and jax.process_index() == 0:
    tokenizer.save(own)  # the workdir keeps the tokenizer its checkpoints were trained with
  return tokenizer


def run_metadata(config, state, tokenizer, corpus):
  return {
      "config": config_lib.to_dict(config),
      "params": ckpt_lib.param_signature(state.params),
      "layer_layout": ckpt_lib.LAYER_LAYOUT,
      "mesh": config.mesh.axis_sizes(),
      "tokenizer_sha256": tokenizer.checksum,
      "data_fingerprint": corpus.fingerprint,
      "data_order": data_order(config),
  }


def data_order(config) -> dict:
  """The settings that decide which document the data iterator's saved position points at: a
  resume with others would continue from the same position in another order."""
  d = config.data
  return {
      "seed": config.seed,
      "data.seq_len": d.seq_len,
      "data.text_field": d.text_field,
      "data.streams": pipeline.stream_count(d),
      "data.num_workers": d.num_workers,
  }


def _dataset(config, corpus, qa_arrays, tokenizer, num_workers=0):
  """This process's batches: {"tokens": [local batch, seq_len + 1]} and, with question/answer
  rows, "qa" (see pipeline.make_dataset)."""
  return pipeline.make_dataset(corpus,
                               tokenizer,
                               seq_len=config.data.seq_len,
                               global_batch=config.train.batch_size,
                               seed=config.seed,
                               streams=pipeline.stream_count(config.data),
                               process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               num_workers=num_workers,
                               qa=qa_arrays,
                               qa_rows=config.reflect.qa_rows)


def _encode_qa(config, records, tokenizer, pieces):
  """The encoded question/answer rows the run reflects on, or None (none needed or none held)."""
  r = config.reflect
  if not r.qa_rows or records is None:
    return None
  arrays, left_out = qa.encode(records,
                               tokenizer,
                               prompt_len=r.prompt_len,
                               target_len=r.target_len,
                               reference_width=pieces.text_bytes(r.target_len))
  if left_out:
    logging.warning(
        "%d of %d bundled question/answer examples have answers that do not fit "
        "reflect.target_len = %d tokens (with the newline before and <eos> after) and are "
        "left out", left_out, len(records), r.target_len)
  return arrays


def packed_rows(local, put, document_masking):
  """A batch of packed rows -> (PackedRows, question/answer ReflectRows or None) of global
  arrays (`put` makes one of a process's part); the segment ids with `document_masking` or a
  loss mask (packed post-training examples never attend to each other)."""
  rows = ReflectRows(**{k: put(v) for k, v in local["qa"].items()}) if "qa" in local else None
  loss_mask = put(local["loss_mask"]) if "loss_mask" in local else None
  segment_ids = put(local["segment_ids"]) if document_masking or loss_mask is not None else None
  return PackedRows(put(local["tokens"]), segment_ids, loss_mask), rows


@dataclasses.dataclass(frozen=True)
class TrainingData:
  """What a run trains on: pretraining's corpus (`pretraining_data`) or post-training records
  (posttrain/)."""
  corpus: sources.Corpus  # trains the tokenizer when none is given; its fingerprint is the run's
  # (a batch of this process's arrays, put) -> the step's (rows, qa) of global arrays, `put`
  # making one of a process's part (see `packed_rows`)
  rows: Callable
  # (tokenizer, pieces, num_workers) -> IterDataset of this process's batches (see
  # `packed_rows`); pieces: the tokenizer's PieceBytes when reflection reads answers, else None
  batches: Callable
  # (tokenizer, pieces) -> a function making the held-out batches anew (the same every time),
  # or None (no held-out data)
  held_out: Callable
  objective: train_step.Objective | None = None  # None: pretraining's loss
  rows_per_example: int = 1  # rows of seq_len tokens one batch entry takes (a DPO pair: 2)


def pretraining_data(config) -> TrainingData:
  """The corpus (data.files, data.mixture or the bundled tasks, with any data.qa_files) and, when
  reflection reads them, question/answer rows; held out: data.eval_files or the bundled tasks'
  other seed."""
  corpus = sources.load_corpus(config.data, config.seed)
  needs_qa = config.data.qa_files or config.reflect.qa_rows
  qa_records = qa.load(config.data, config.seed) if needs_qa else []
  if config.data.qa_files:  # a user's question/answer records are documents too
    corpus = sources.joined(corpus, [r.document() for r in qa_records], "qa_files")
  if corpus.replaced_utf8_errors:
    logging.warning("replaced %d invalid UTF-8 sequences in the data files",
                    corpus.replaced_utf8_errors)

  def batches(tokenizer, pieces, num_workers):
    return _dataset(config, corpus, _encode_qa(config, qa_records, tokenizer, pieces), tokenizer,
                    num_workers)

  # read at start-up, with the training data: a bad held-out file stops the run before anything
  wanted = config.train.eval_batches or config.reflect.strategies.enabled
  held_out_corpus = sources.load_held_out(config.data, config.seed) if wanted else None
  held_out_qa = (qa.load_held_out(config.data, config.seed)
                 if held_out_corpus is not None and config.reflect.qa_rows else None)

  def held_out(tokenizer, pieces):
    if held_out_corpus is None:
      return None
    qa_arrays = None
    if config.reflect.qa_rows:
      qa_arrays = _encode_qa(config, held_out_qa, tokenizer, pieces)
      if qa_arrays is None:
        logging.warning(
            "no held-out evaluation: reflect.source=%s needs held-out question/answer "
            "records (data.qa_eval_files)", config.reflect.source)
        return None
    sources.check_tokenized(held_out_corpus, tokenizer.checksum)
    dataset = _dataset(config, held_out_corpus, qa_arrays, tokenizer)  # its checks run now
    return lambda: dataset  # iterated from its start at every evaluation

  return TrainingData(corpus,
                      functools.partial(packed_rows, document_masking=config.data.document_masking),
                      batches, held_out)


class _HeldOutEval:
  """Mean training metrics on held-out batches (the same batches and windows every time)."""

  def __init__(self, config, data, make_data, tokenizer, pieces, safety, graphdef, shardings, mesh):
    self._batches = config.train.eval_batches
    self._make_data = make_data  # () -> the held-out batches from the first
    self._rows = data.rows
    batch = sharding.batch_sharding(mesh)
    self._step = jax.jit(train_step.make_eval_step(graphdef, config, tokenizer.marker_ids, pieces,
                                                   data.objective, safety),
                         in_shardings=(shardings, batch, batch, None),
                         out_shardings=sharding.replicated(mesh))
    self._key = jax.random.key(config.seed + HELD_OUT_KEY_OFFSET)
    self._put = _local_to_global(mesh)

  def __call__(self, state):
    metrics = []
    for index, local in zip(range(self._batches), self._make_data()):
      rows, qa = self._rows(local, self._put)
      key = jax.random.fold_in(self._key, index)
      metrics.append(jax.device_get(self._step(state, rows, qa, key)))
    return {f"eval/{name}": value for name, value in mean_metrics(metrics).items()}


def _weight_name(name):
  """The metric that counts what `name` is a mean over, or None for plain means."""
  if name.startswith("acc_k"):
    return f"rows/{name.split('/', 1)[1]}"
  if name.startswith("rewards/") and name.count("/") == 2:  # DPO's per pair type
    return f"pairs/{name.rsplit('/', 1)[1]}"
  if name.startswith("critic/auroc/"):  # a safety dimension's, by its own (safe, flagged) pairs
    return f"critic/auroc_pairs/{name.rsplit('/', 1)[1]}"
  if name.startswith("critic/scale_auroc/"):  # a critic scale's, by the (right, wrong) pairs
    return "critic/auroc_pairs"
  return "critic/auroc_pairs" if name in ("critic/auroc", "critic/disagreement_auroc") else None


def mean_metrics(batches):
  """Means over batches of each metric ({name: scalar} per batch); a task's accuracies
  (`acc_k{k}/<task>`) are weighted by the task's rows in each batch (`rows/<task>`) and the
  critic's AUROCs by their (right, wrong) pairs, so a batch without any counts for nothing.
  When no batch counts (no rows of a task, no pair), the plain mean stands: 0 accuracy, and
  AUROC 0.5, the value of no signal."""
  totals, weights, plain = {}, {}, {}
  for metrics in batches:
    for name, value in metrics.items():
      weight_name = _weight_name(name)
      weight = float(metrics[weight_name]) if weight_name else 1.0
      totals[name] = totals.get(name, 0.0) + float(value) * weight
      weights[name] = weights.get(name, 0.0) + weight
      plain[name] = plain.get(name, 0.0) + float(value) / len(batches)
  return {name: totals[name] / weights[name] if weights[name] else plain[name] for name in totals}


class _Preemption:
  """SIGTERM -> save and stop at a step boundary.

  One process records the signal itself. Several processes use jax's preemption sync manager
  (started by jax.distributed.initialize): it catches SIGTERM on any process and names one step,
  after the newest step every process has reported, at which all of them save and stop. Every
  process reports the step it starts from first (a SIGTERM during restore then stops before
  training, one during the first compilation after the first step), then every step it completes.
  """

  def __init__(self):
    self._shared = jax.process_count() > 1
    self._signalled = False
    if not self._shared:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step) -> bool:
    """Whether to stop (saving) at `step`; every process calls it with its starting step, then
    after every step."""
    if self._shared:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def restore(self):
    if not self._shared:
      signal.signal(signal.SIGTERM, self._previous)


def _held_out_eval(config, data, tokenizer, pieces, safety, graphdef, shardings, mesh):
  """The held-out evaluation of `data` (TrainingData), or None (no eval batches or no held-out
  data)."""
  make_data = data.held_out(tokenizer, pieces) if config.train.eval_batches else None
  if make_data is None:
    return None
  return _HeldOutEval(config, data, make_data, tokenizer, pieces, safety, graphdef, shardings, mesh)


def _strategy_decision(config, data, tokenizer, pieces, safety, graphdef, tx, shardings, mesh):
  """Run.decide: the adaptive strategy's decision (step.make_strategy_decision) against the
  first held-out batch, or None without strategies."""
  if not config.reflect.strategies.enabled:
    return None
  make_data = data.held_out(tokenizer, pieces)
  if make_data is None:
    raise config_lib.ConfigError(
        f"config.reflect.strategies.weights={config.reflect.strategies.weights!r}: measures each "
        "strategy on held-out data, and this run has none (set data.eval_files, or use "
        "data.source=bundled)")
  held_rows, held_qa = data.rows(next(iter(make_data())), _local_to_global(mesh))
  batch = sharding.batch_sharding(mesh)
  decide = jax.jit(train_step.make_strategy_decision(graphdef, config, tx, tokenizer.marker_ids,
                                                     pieces, safety),
                   in_shardings=(shardings, batch, batch, batch, batch, None),
                   out_shardings=shardings,
                   donate_argnums=0)
  key = jax.random.key(config.seed + STRATEGY_KEY_OFFSET)
  return lambda state, batch: decide(state, *batch, held_rows, held_qa,
                                     jax.random.fold_in(key, state.step))


def _local_to_global(mesh):
  """put(array of this process's rows) -> the global array, split over the data axes."""
  batch_sharding = sharding.batch_sharding(mesh)
  return lambda array: jax.make_array_from_process_local_data(batch_sharding, np.asarray(array))


@dataclasses.dataclass
class Run:
  """Everything the loop needs, restored or initialised by `setup`."""
  config: config_lib.Config  # with a resolved mesh
  workdir: str
  mesh: jax.sharding.Mesh
  state: train_state.TrainState  # restored, or freshly initialised
  start: int  # the step the state is at
  step_fn: Callable  # jitted train_step(state, tokens, qa) -> (state, metrics)
  data: Iterator  # this process's batches from step `start` + 1 on
  rows: Callable  # (batch, put) -> the step's (rows, qa) (TrainingData.rows)
  rows_per_example: int  # TrainingData.rows_per_example: scales tokens/s and MFU
  checkpointer: ckpt_lib.Checkpointer
  meta: dict  # the checkpoint metadata of this run
  evaluate: Callable | None  # held-out metrics of a state, or None
  writer: metrics_lib.MetricWriter
  # (state, the step's (rows, qa)) -> state after the adaptive strategy's decision, or None
  decide: Callable | None = None


def _initial_params(config, workdir):
  """InitialParams of config.init_from, or None without one. A resumed run no longer needs them:
  then they may be gone."""
  if not config.init_from:
    return None
  try:
    return ckpt_lib.locate_initial(config.init_from)
  except ckpt_lib.CheckpointError:
    if epath.Path(ckpt_lib.checkpoint_dir(workdir)).exists():
      return None
    raise


def setup(config, workdir, faults=faults_lib.NO_FAULTS, data=None) -> Run:
  """Loads the data (TrainingData; default `pretraining_data`) and tokenizer, builds the mesh
  and the jitted step, restores the newest checkpoint (or initialises); `faults` wrap the step,
  the data and the checkpointer."""
  config = config_lib.resolve_mesh(config, jax.device_count())
  config, _ = memory_fit.resolve_auto(config, data.objective if data is not None else None)
  if faults.crashes_at_commit and not config.checkpoint.async_save:
    raise config_lib.ConfigError(f"{faults_lib.ENV}: crash_in_save at commit needs "
                                 "checkpoint.async_save=True")
  storage.makedirs(workdir)
  data = data or pretraining_data(config)
  corpus = data.corpus
  initial = _initial_params(config, workdir)
  tokenizer = prepare_tokenizer(config, workdir, corpus, initial)
  sources.check_tokenized(corpus, tokenizer.checksum)
  # The bytes of every token, for reading answers of question/answer rows on device and for a
  # hierarchical critic's sentences.
  r = config.reflect
  pieces = (tokenizer.piece_bytes(config.model.vocab_size) if r.qa_rows or
            (r.enabled and r.critics.hierarchy) else None)
  safety = safety_quality.make_safety_quality(config, tokenizer)  # reflect.safety_dims' labels
  mesh = sharding.make_mesh(config.mesh)
  graphdef, abstract, specs = train_state.abstract_state(config)
  shardings = train_state.to_shardings(specs, mesh)
  attention_impl = attention.resolve(config.model.attention_impl, config.model.dtype)
  logging.info("attention: %s (model.attention_impl=%s)", attention_impl,
               config.model.attention_impl)
  if attention_impl == "splash" and jax.default_backend() != "tpu":
    logging.warning(
        "attention: splash runs in Pallas's interpret mode on %s: correct, but "
        "slow (a test path; use auto)", jax.default_backend())

  batches = pipeline.ResumableIterator(data.batches(tokenizer, pieces, config.data.num_workers))
  if jax.process_index() == 0:
    ckpt_lib.check_writable(ckpt_lib.checkpoint_dir(workdir))
  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir),
                                       config.checkpoint,
                                       on_commit=faults_lib.on_commit(faults))
  meta = run_metadata(config, abstract, tokenizer, corpus)
  start = checkpointer.latest_step()
  if start is not None:
    ckpt_lib.compare_meta(checkpointer.read_meta(start), meta)
    state = checkpointer.restore(start, ckpt_lib.with_shardings(abstract, shardings), batches)
    logging.info("resumed from step %d", start)
  else:
    state, _ = train_state.init_state(config, mesh)
    if config.init_from:  # the optimizer state starts fresh (AdamW moments do not read params)
      initial = initial or ckpt_lib.locate_initial(config.init_from)  # raises: it is gone
      if initial.meta is not None and initial.meta.get("tokenizer_sha256") != tokenizer.checksum:
        raise ckpt_lib.CheckpointError(
            f"config.init_from {initial.path} was trained with another tokenizer than "
            f"{tokenizer.path} (leave config.data.tokenizer empty to use the run's own)")
      params = ckpt_lib.restore_initial(initial,
                                        ckpt_lib.with_shardings(abstract.params, shardings.params))
      state = state.replace(params=params)
      logging.info("initialised parameters from %s", config.init_from)
    start = 0

  tx = optim.make_optimizer(config.train, abstract.params)
  step = train_step.make_train_step(graphdef,
                                    config,
                                    tx,
                                    tokenizer.marker_ids,
                                    faults_lib.grad_hook(faults),
                                    pieces=pieces,
                                    safety=safety,
                                    objective=data.objective)
  step_fn = train_step.jit_train_step(step, shardings, mesh)
  # the bundled held-out data is another seed's, with a facts world of its own
  held_out_world = (config.seed
                    + sources.HELD_OUT_SEED_OFFSET if config.data.source == "bundled" else None)
  held_out_safety = (safety if held_out_world is None else safety_quality.make_safety_quality(
      config, tokenizer, held_out_world))
  evaluate = _held_out_eval(config, data, tokenizer, pieces, held_out_safety, graphdef, shardings,
                            mesh)
  decide = _strategy_decision(config, data, tokenizer, pieces, held_out_safety, graphdef, tx,
                              shardings, mesh)
  writer = metrics_lib.MetricWriter(workdir,
                                    enabled=jax.process_index() == 0,
                                    start_step=start,
                                    wandb_project=config.metrics.wandb_project,
                                    run_config=config_lib.to_dict(config))
  return Run(config=config,
             workdir=workdir,
             mesh=mesh,
             state=state,
             start=start,
             step_fn=step_fn,
             data=faults_lib.instrument_data(batches, faults, start + 1),
             rows=data.rows,
             rows_per_example=data.rows_per_example,
             checkpointer=faults_lib.instrument_checkpointer(checkpointer, faults),
             meta=meta,
             evaluate=evaluate,
             writer=writer,
             decide=decide)


def _compile(step_fn, state, batch):
  """`step_fn` compiled for these inputs (the persistent cache serves a repeat), with a log line
  of the time it took."""
  logging.info("compiling the training step ...")
  begin = time.perf_counter()
  compiled = step_fn.lower(state, *batch).compile()
  logging.info("compiling the training step (%.1f s)", time.perf_counter() - begin)
  return compiled


class _NonFiniteWatch:
  """train.nan_policy=stop without a device read per step: each step's `finite` flag stays on
  the device until `check` (at the next log or checkpoint step) reads them all at once and
  raises NonFiniteError naming the first bad step; nothing of a later step is written first."""

  def __init__(self, enabled):
    self._enabled, self._pending = enabled, []  # [(step, finite flag on device)]

  def add(self, step, finite):
    if self._enabled:
      self._pending.append((step, finite))

  def check(self):
    pending, self._pending = self._pending, []
    for step, finite in zip([s for s, _ in pending], jax.device_get([f for _, f in pending])):
      if not finite:
        raise NonFiniteError(f"non-finite loss or gradients at step {step} "
                             "(train.nan_policy=stop); that update was dropped and no "
                             f"checkpoint after step {step - 1} is written")


class _Profiler:
  """A jax.profiler trace of steps first..last (train.profile_steps) into `folder`."""

  def __init__(self, steps, folder):
    self._steps, self._folder, self._on = steps, folder, False

  def before(self, step):
    if self._steps and step == self._steps[0]:
      options = jax.profiler.ProfileOptions()
      options.python_tracer_level = 0  # tracing every Python call would slow the host it shows
      jax.profiler.start_trace(self._folder, profiler_options=options)
      self._on = True

  def after(self, step, state):
    if self._on and step == self._steps[1]:
      jax.block_until_ready(state)  # the traced steps' device work ends inside the trace
      self.close()
      logging.info("profile of steps %d-%d written to %s", *self._steps, self._folder)

  def close(self):
    if self._on:
      jax.profiler.stop_trace()
      self._on = False


def loop(run: Run, *, stop_at_step=None):
  """Trains from `run.start` to config.train.steps; returns the final TrainState.

  Logs and writes metrics every train.log_every_steps, evaluates held-out data every
  train.eval_every_steps, saves every checkpoint.every_steps, at the end and at a SIGTERM.
  `stop_at_step` ends the run early (with a checkpoint) as if preempted there.
  """
  config, state, start = run.config, run.state, run.start
  tokens_per_step = config.train.batch_size * config.data.seq_len * run.rows_per_example
  flops_per_step = flops.flops_per_step(config) * run.rows_per_example
  peak = flops.peak_flops_per_device(config.train.peak_flops_per_device) * jax.device_count()
  put = _local_to_global(run.mesh)
  preemption = _Preemption()
  total = config.train.steps
  end = start if start < total and preemption.reached(start) else total
  if end < total:
    logging.warning("SIGTERM before step %d; stopping at the restored step %d", start + 1, start)
  finished = False
  step_fn, window_steps = run.step_fn, 0
  watch = _NonFiniteWatch(config.train.nan_policy == "stop")
  profiler = _Profiler(config.train.profile_range(), os.path.join(run.workdir, "profile"))
  try:
    with sharding.activate(run.mesh):
      for step in range(start, end):
        local = next(run.data)
        done = step + 1
        batch = run.rows(local, put)
        if step == start:
          step_fn = _compile(run.step_fn, state, batch)
          window_start = time.perf_counter()
        profiler.before(done)
        state, metrics = step_fn(state, *batch)
        profiler.after(done, state)
        if step == start:
          jax.block_until_ready(metrics)
          logging.info("first step: %.2f s", time.perf_counter() - window_start)
        watch.add(done, metrics["finite"])
        window_steps += 1
        every = config.train.eval_every_steps
        run_eval = run.evaluate is not None and (done == total or (every and done % every == 0))
        if done % config.train.log_every_steps == 0 or done == total or run_eval:
          watch.check()
          metrics = jax.device_get(metrics)
          elapsed = time.perf_counter() - window_start
          step_time = elapsed / window_steps
          record = dict(metrics,
                        step_time_s=step_time,
                        tokens_per_sec=tokens_per_step / step_time,
                        mfu=flops_per_step / step_time / peak)
          if run_eval:
            record.update(run.evaluate(state))
          run.writer.write(done, record)
          logging.info("step %d/%d loss %.4f lr %.3g | %.0f tok/s mfu %.1f%% | ETA %s", done, total,
                       record["loss"], record["lr"], record["tokens_per_sec"], 100 * record["mfu"],
                       progress.format_eta(step_time * (total - done)))
          window_start, window_steps = time.perf_counter(), 0
        strategies = config.reflect.strategies
        if run.decide is not None and done % strategies.every_steps == 0 and done < total:
          state = run.decide(state, batch)  # before the checkpoint of `done` holds the state
        preempted = preemption.reached(done)
        stop = preempted or done == stop_at_step
        if done % config.checkpoint.every_steps == 0 or done == total or stop:
          watch.check()  # a checkpoint never follows a bad step under nan_policy=stop
          run.checkpointer.save(done, state, run.data, run.meta)
        if stop and done < total:
          logging.warning("stopping at step %d (%s); checkpoint saved", done,
                          "SIGTERM" if preempted else "stop_at_step")
          break
    finished = True
  finally:
    profiler.close()
    preemption.restore()
    run.writer.close()
    run.checkpointer.close(raise_errors=finished)  # waits for the save in flight
  return state


def train(config, workdir, *, stop_at_step=None, data=None):
  """Trains (or resumes) on `data` (TrainingData; default `pretraining_data`) to
  config.train.steps; returns the final TrainState. Faults named in RASR_FAULTS (faults.py) are
  injected."""
  try:
    faults = faults_lib.from_env()
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  return loop(setup(config, workdir, faults, data), stop_at_step=stop_at_step)
