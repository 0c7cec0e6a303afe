"""Timing and batches shared by the benchmark scripts (no flags here)."""

import functools
import importlib.util
import statistics
import time

import jax
import numpy as np

from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.data import packing, qa, sources
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.interop import hf
from rasr_jax.reflection.rows import ReflectRows
from rasr_jax.training import optim, train_state
from rasr_jax.training import step as train_step

TOKENIZER_DOCS = 5000  # bundled documents the benchmark tokenizer is trained on
# Student's t quantile of a two-sided 95 % interval, by degrees of freedom.
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values):
  """(mean, half-width of its 95 % t-interval) of per-seed values (nan for one seed)."""
  mean = statistics.fmean(values)
  if len(values) < 2:
    return mean, float("nan")
  return mean, T_95[len(values) - 1] * statistics.stdev(values) / len(values)**0.5


def load_config(path, settings):
  """The config file at `path` with FIELD=VALUE `settings` applied (as `--config.FIELD=VALUE`
  would), validated."""
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for setting in settings:
    field, value = setting.split("=", 1)
    *parents, leaf = field.split(".")
    node = functools.reduce(getattr, parents, config)
    old = getattr(node, leaf)
    if isinstance(old, bool):
      if value not in ("True", "False"):
        raise config_lib.ConfigError(f"--set={setting}: {field} is True or False")
      value = value == "True"
    elif not isinstance(old, str):
      try:
        value = type(old)(value)
      except ValueError:  # e.g. "auto" for an int field: the config's own rules judge it
        pass
    setattr(node, leaf, value)
  return config_lib.load(config)


def bundled_tokenizer(config):
  """A tokenizer trained on the bundled tasks, for `config`'s vocabulary."""
  corpus = sources.load_corpus(config.data, config.seed)
  return tok_lib.train(corpus.texts(TOKENIZER_DOCS), config.model.vocab_size)


def batch_and_pieces(config, mesh, tokenizer):
  """((PackedRows, question/answer ReflectRows or None), PieceBytes or None): random tokens
  (the same for every config of one shape; each row one document), and the run's
  question/answer rows of the bundled tasks encoded as training encodes them when `config`
  (mesh resolved) reflects on them."""
  rows, seq = config.train.batch_size, config.data.seq_len
  tokens = np.random.RandomState(0).randint(6, config.model.vocab_size, (rows, seq + 1))
  put = lambda array: jax.device_put(np.asarray(array), sharding.batch_sharding(mesh))
  packed = jax.tree.map(put,
                        packing.whole_rows(tokens.astype(np.int32), config.data.document_masking))
  r = config.reflect
  if not r.qa_rows:
    return (packed, None), None
  records = qa.load(config.data, config.seed)
  pieces = tokenizer.piece_bytes(config.model.vocab_size)
  arrays, _ = qa.encode(records[:4 * r.qa_rows],
                        tokenizer,
                        prompt_len=r.prompt_len,
                        target_len=r.target_len,
                        reference_width=pieces.text_bytes(r.target_len))
  qa_rows = ReflectRows(**{name: put(a[:r.qa_rows]) for name, a in arrays.items()})
  return (packed, qa_rows), pieces


def compiled_step(config, mesh, tokenizer):
  """(jitted train step, fresh state, batch) for `config` (mesh resolved); `tokenizer` None
  where no question/answer rows reflect (the trained tokenizers' marker ids then)."""
  graphdef, abstract, _ = train_state.abstract_state(config)
  state, shardings = train_state.init_state(config, mesh)
  tx = optim.make_optimizer(config.train, abstract.params)
  batch, pieces = batch_and_pieces(config, mesh, tokenizer)
  marker_ids = tokenizer.marker_ids if tokenizer else tok_lib.TRAINED_MARKER_IDS
  step = train_step.make_train_step(graphdef, config, tx, marker_ids, pieces=pieces)
  return train_step.jit_train_step(step, shardings, mesh), state, batch


def time_steps(step_fn, state, batch, steps):
  """Median seconds per call of `step_fn(state, *batch)` over `steps` calls after two warm-ups."""
  for _ in range(2):
    state, out = step_fn(state, *batch)
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, out = step_fn(state, *batch)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return statistics.median(times), state


def interleaved_call_medians(calls, rounds):
  """{name: median seconds per call}, calling each zero-argument function in turn, `rounds`
  times, after two warm-up calls each. Interleaving keeps slow drifts of the machine out of the
  ratios between them. A call returns what `jax.block_until_ready` should wait for."""
  for call in calls.values():
    for _ in range(2):
      jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def step_caller(step_fn, state, batch):
  """A zero-argument call running one train step, step_fn(state, *batch), that carries the
  (donated) state from call to call; returns the step's outputs."""
  holder = {"state": state}

  def call():
    holder["state"], out = step_fn(holder["state"], *batch)
    return out

  return call


def interleaved_medians(runs, rounds, extra_calls=None):
  """{name: median seconds per step} of train steps timed in turn (see interleaved_call_medians),
  and of the zero-argument `extra_calls` {name: call} timed in the same rounds.

  `runs` maps a name to (step_fn, state, batch), each called through `step_caller`.
  """
  calls = {name: step_caller(*run) for name, run in runs.items()}
  return interleaved_call_medians({**calls, **(extra_calls or {})}, rounds)


def hf_model(config):
  """(transformers' causal LM of `config`'s model, the config.json `interop.hf export` writes for
  it, with random weights in float32, {library: version}), or (None, {}) when torch or
  transformers is not installed."""
  try:
    import torch
    import transformers
  except ImportError:
    return None, {}
  fields = hf.hf_config_of(config, {})
  hf_config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
  torch.manual_seed(0)
  versions = {
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "torch_threads": torch.get_num_threads()
  }
  return transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32), versions
