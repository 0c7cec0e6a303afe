"""ConfigDict -> frozen dataclasses, with every start-up rule and a message naming the field.

`load(config_dict)` is the only way the rest of the code gets a config: it rejects unknown or
missing keys, wrong types, non-positive sizes and rates and inconsistent shapes, raising
`ConfigError` with one line that names the field, its value and the rule.
"""

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import typing

from rasr_jax import rounding


class ConfigError(ValueError):
  """A configuration value breaks a rule; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float
  rope_type: str
  rope_factor: float
  rope_low_freq_factor: float
  rope_high_freq_factor: float
  rope_original_max_positions: int
  max_positions: int
  norm_eps: float
  init_std: float
  tie_embeddings: bool
  attention_bias: bool
  attention_impl: str  # model/attention.py: auto | xla | dense | cudnn | splash | blockwise
  param_dtype: str
  dtype: str
  remat_policy: str
  scan_unroll: int  # blocks per iteration of the loop over layers (model/transformer.py)


def _weighted_part(part: str, form: str, kind: str = "") -> tuple[str, float]:
  """(name, weight) of one NAME=WEIGHT `part` of a weighted list (data.mixture,
  data.bundled_mix); ValueError naming the `form` expected, or a weight that is not a finite
  number > 0 (a weight of 0: leave the part out instead). `kind` starts each message."""
  name, sep, weight = (s.strip() for s in part.rpartition("="))
  try:
    value = float(weight)
  except ValueError:
    value = None
  if not sep or not name or value is None:
    raise ValueError(f"{kind}{part!r} is not {form}")
  if not 0 < value < math.inf:
    raise ValueError(f"{kind}{part!r}: the weight must be a finite number > 0")
  return name, value


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str
  files: str
  text_field: str
  eval_files: str
  qa_files: str
  qa_checker: str
  qa_eval_files: str
  bundled_examples: int
  bundled_mix: str
  seq_len: int
  tokenizer: str
  tokenizer_sample_docs: int
  document_masking: bool
  invalid_utf8: str
  max_document_chars: int
  num_workers: int
  streams: int
  mixture: str

  def mixture_components(self) -> list:
    """[(globs, weight)] of `mixture` ("GLOBS=WEIGHT;GLOBS=WEIGHT"), weights as written;
    ValueError saying what is wrong."""
    components = [
        _weighted_part(part, "GLOBS=WEIGHT", "component ")
        for part in (p.strip() for p in self.mixture.split(";") if p.strip())
    ]
    if not components:
      raise ValueError("names no component (expected GLOBS=WEIGHT;GLOBS=WEIGHT)")
    return components

  def bundled_weights(self) -> dict[str, float] | None:
    """{task: weight} of `bundled_mix` ("TASK=WEIGHT,TASK=WEIGHT"; a task not named is left
    out), or None for the default mix (tasks.DEFAULT_MIX); ValueError saying what is wrong."""
    if not self.bundled_mix.strip():
      return None
    weights = {}
    for part in (p.strip() for p in self.bundled_mix.split(",")):
      task, value = _weighted_part(part, "TASK=WEIGHT")
      if task not in BUNDLED_TASKS:
        raise ValueError(f"{task!r} is not a bundled task ({', '.join(BUNDLED_TASKS)})")
      if task in weights:
        raise ValueError(f"{task!r} is named twice")
      weights[task] = value
    return weights


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int
  batch_size: int
  grad_accum_steps: int | str  # micro-batches per update, or AUTO
  lr: float
  warmup_steps: int
  end_lr_ratio: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  grad_clip: float
  critic_lr: float
  controller_lr: float
  log_every_steps: int
  eval_every_steps: int
  eval_batches: int
  peak_flops_per_device: float
  nan_policy: str
  profile_steps: str  # "FIRST,LAST": a jax.profiler trace of those steps ("" = none)
  memory_limit_gib: float  # caps what AUTO settings fit into (0 = the device's reported limit)

  def profile_range(self) -> tuple[int, int] | None:
    """(first, last) step of the profiler trace, or None; ValueError when malformed."""
    if not self.profile_steps.strip():
      return None
    parts = self.profile_steps.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
      raise ValueError("expected FIRST,LAST: two step numbers")
    first, last = (int(p) for p in parts)
    if not 1 <= first <= last:
      raise ValueError("expected 1 <= FIRST <= LAST")
    return first, last


@dataclasses.dataclass(frozen=True)
class CriticsConfig:
  agents: int  # A critic agents (1: one critic, no committee)
  hierarchy: bool  # token, sentence and document scales combined with learned weights


@dataclasses.dataclass(frozen=True)
class StrategiesConfig:
  """Adaptive strategy evolution (training/strategy.py): candidate loss weight vectors."""
  weights: str  # "" = off; else "alpha,beta,gamma;alpha,beta,gamma;...", the first used first
  every_steps: int  # steps between the bandit's decisions
  eta: float  # the multiplicative-weights learning rate

  @property
  def enabled(self):
    return bool(self.weights.strip())

  def vectors(self) -> tuple[tuple[float, float, float], ...]:
    """The strategies as (alpha, beta, gamma); ValueError naming a malformed one."""
    vectors = []
    for part in self.weights.split(";"):
      try:
        numbers = tuple(float(x) for x in part.split(","))
      except ValueError:
        raise ValueError(f"strategy {part.strip()!r} is not three numbers") from None
      if len(numbers) != 3 or not all(map(math.isfinite, numbers)):
        raise ValueError(f"strategy {part.strip()!r} is not three finite numbers")
      if min(numbers) < 0 or not any(numbers):
        raise ValueError(f"strategy {part.strip()!r}: weights must be >= 0, not all 0")
      vectors.append(numbers)
    return tuple(vectors)


@dataclasses.dataclass(frozen=True)
class UnifiedConfig:
  """UFARSAP's unified loss (eq. 5): the paradigm losses weighed alike, the coordination terms
  apart."""
  enabled: bool
  paradigm_weight: float  # lambda_i of L_standard, L_reflection, L_critic and L_controller
  coordination_weight: float  # lambda_coord of the consensus and scale-coordination terms


@dataclasses.dataclass(frozen=True)
class ReflectConfig:
  enabled: bool
  source: str
  iterations: int
  rows: int
  prompt_len: int
  target_len: int
  draft_mode: str
  draft_temperature: float
  critic_dims: str
  safety_dims: str  # further critic dimensions, scored by the safety labels ("" = none)
  alpha: float
  beta: float
  gamma: float
  learned_stopping: bool
  stop_warmup: float
  tau: float
  stop_budget: float
  tau_lr: float
  quality_target: float
  min_gain: float
  controller_hidden: int
  critics: CriticsConfig
  strategies: StrategiesConfig
  unified: UnifiedConfig

  @property
  def dim_names(self):
    """Every critic dimension: the quality dimensions, then the safety dimensions."""
    return self.quality_dim_names + self.safety_dim_names

  @property
  def quality_dim_names(self):
    return tuple(d.strip() for d in self.critic_dims.split(","))

  @property
  def safety_dim_names(self):
    return tuple(d.strip() for d in self.safety_dims.split(",")) if self.safety_dims.strip() else ()

  @property
  def num_dims(self):
    return len(self.dim_names)

  @property
  def critique_len(self):
    """Soft critique tokens of the refine pass: one per dimension, the scalar critique, and the
    committee's disagreement when there is a committee."""
    return self.num_dims + 1 + (self.critics.agents > 1)

  @property
  def qa_rows(self):
    """Question/answer rows per global batch (all with source=qa, half with mixed)."""
    if not self.enabled:
      return 0
    return {"qa": self.rows, "mixed": self.rows // 2, "text": 0}[self.source]

  @property
  def text_rows(self):
    """Text-window rows per global batch."""
    return self.rows - self.qa_rows if self.enabled else 0


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  files: str
  eval_files: str


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  files: str
  eval_files: str
  reference: str
  beta: float
  label_smoothing: float
  length_control: str


@dataclasses.dataclass(frozen=True)
class AvRConfig:
  stage: str
  prompts_file: str
  num_prompts: int
  reward: str
  critiques: int
  improvements: int
  temperature: float
  top_p: float
  max_new_tokens: int
  search_rounds: int
  samples: int
  chunk_prompts: int
  output: str


@dataclasses.dataclass(frozen=True)
class ConstitutionalConfig:
  principles_file: str
  rounds: int


@dataclasses.dataclass(frozen=True)
class SelfAlignConfig:
  rounds: int
  tasks: str  # comma-separated bundled tasks whose templates give the prompts
  prompts: int
  self_written: float
  samples: int
  temperature: float
  top_p: float
  max_new_tokens: int
  sft_steps: int
  lr_ratio: float  # the rounds' SFT peak learning rate = train.lr x lr_ratio
  eval_items: int
  output: str

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.strip() for t in self.tasks.split(","))


@dataclasses.dataclass(frozen=True)
class SafetyConfig:
  toxicity_lexicon: str
  bias_lexicon: str
  toxicity_hook: str
  bias_hook: str


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int
  max_to_keep: int
  async_save: bool


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int
  fsdp: int
  tensor: int
  dcn_data: int = 1  # granules (slices or hosts) over which the data axis is split

  def axis_sizes(self):
    return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
  wandb_project: str  # "" = no Weights & Biases logging


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int
  init_from: str  # parameters to start from (`save_params` layout); "" = fresh init
  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  reflect: ReflectConfig
  sft: SFTConfig
  dpo: DPOConfig
  avr: AvRConfig
  constitutional: ConstitutionalConfig
  self_align: SelfAlignConfig
  safety: SafetyConfig
  checkpoint: CheckpointConfig
  metrics: MetricsConfig
  mesh: MeshConfig


DTYPES = ("float32", "bfloat16")
ROPE_TYPES = ("default", "linear", "llama3")
# model/attention.py's (a test holds them equal)
ATTENTION_IMPLS = ("auto", "xla", "dense", "cudnn", "splash", "blockwise")
# Set before training by training/memory_fit.py: the smallest accumulation, the cheapest remat.
AUTO = "auto"
REMAT_POLICIES = ("none", "dots", "dots_no_batch", "full")  # cheapest (least recompute) first
DATA_SOURCES = ("bundled", "files")
DRAFT_MODES = ("teacher_forced", "autoregressive")
REFLECT_SOURCES = ("qa", "text", "mixed")
# tasks.CHECKERS, without importing the tasks here (a test holds them equal)
QA_CHECKERS = ("exact", "final_answer", "choice", "true_false")
CRITIC_DIMS = ("factual", "logic", "relevance")
# The safety dimensions with a label of a text (the safety labels', rasr_jax/safety/labels.py;
# a test holds them equal), and those a critic can be trained on: these and adversarial
# robustness, whose label is whether perturbing the prompt flips one of the critic's own verdicts
# (safety/robustness.py).
SAFETY_DIMS = ("bias", "toxicity", "misinformation", "privacy")
ROBUSTNESS = "robustness"
CRITIC_SAFETY_DIMS = (*SAFETY_DIMS, ROBUSTNESS)
UTF8_POLICIES = ("error", "replace")
NAN_POLICIES = ("stop", "skip")
LENGTH_CONTROLS = ("none", "drop_longer", "normalize")
AVR_STAGES = ("trees", "search", "final_pairs")  # posttrain/avr_data.py's
# tasks.TASKS, the templates self-alignment prompts come from, and tasks.ALL_TASKS, those the
# bundled mix weighs (a test holds them equal)
SELF_ALIGN_TASKS = ("arithmetic", "logic", "facts", "probe", "support")
BUNDLED_TASKS = (*SELF_ALIGN_TASKS, "filler")

# Fields that must be > 0, and fields that must be >= 0.
_POSITIVE = ("model.vocab_size", "model.d_model", "model.num_layers", "model.scan_unroll",
             "model.num_heads", "model.num_kv_heads", "model.head_dim", "model.mlp_dim",
             "model.rope_theta", "model.rope_factor", "model.rope_original_max_positions",
             "model.norm_eps", "model.init_std", "data.bundled_examples", "data.seq_len",
             "data.tokenizer_sample_docs", "train.steps", "train.batch_size", "train.lr",
             "train.eps", "train.log_every_steps", "checkpoint.every_steps",
             "checkpoint.max_to_keep", "reflect.prompt_len", "reflect.target_len",
             "reflect.controller_hidden", "train.critic_lr", "train.controller_lr", "mesh.dcn_data",
             "dpo.beta", "avr.num_prompts", "avr.critiques", "avr.improvements",
             "avr.max_new_tokens", "avr.chunk_prompts", "avr.search_rounds", "avr.samples",
             "constitutional.rounds", "reflect.critics.agents", "self_align.rounds",
             "reflect.strategies.every_steps", "reflect.strategies.eta", "self_align.prompts",
             "self_align.samples", "self_align.max_new_tokens", "self_align.sft_steps",
             "self_align.lr_ratio", "self_align.eval_items")
_NON_NEGATIVE = ("model.max_positions", "model.rope_low_freq_factor", "data.num_workers",
                 "data.streams", "data.max_document_chars", "train.warmup_steps",
                 "train.weight_decay", "train.grad_clip", "train.memory_limit_gib",
                 "train.eval_every_steps", "train.eval_batches", "train.peak_flops_per_device",
                 "reflect.iterations", "reflect.rows", "reflect.draft_temperature", "reflect.alpha",
                 "reflect.beta", "reflect.gamma", "reflect.stop_budget", "reflect.tau_lr",
                 "reflect.min_gain", "reflect.unified.paradigm_weight",
                 "reflect.unified.coordination_weight", "avr.temperature", "self_align.temperature")
_CHOICES = {
    "model.param_dtype": DTYPES,
    "model.dtype": DTYPES,
    "model.remat_policy": REMAT_POLICIES + (AUTO,),
    "model.rope_type": ROPE_TYPES,
    "model.attention_impl": ATTENTION_IMPLS,
    "data.source": DATA_SOURCES,
    "data.invalid_utf8": UTF8_POLICIES,
    "reflect.draft_mode": DRAFT_MODES,
    "reflect.source": REFLECT_SOURCES,
    "data.qa_checker": QA_CHECKERS,
    "train.nan_policy": NAN_POLICIES,
    "dpo.length_control": LENGTH_CONTROLS,
    "avr.stage": AVR_STAGES
}
_UNIT_INTERVAL = ("train.end_lr_ratio", "train.b1", "train.b2", "reflect.tau",
                  "reflect.stop_warmup", "reflect.quality_target", "avr.top_p",
                  "self_align.self_written", "self_align.top_p")

# Config fields that hold paths (comma-separated for the data globs).
PATH_FIELDS = ("init_from", "data.files", "data.eval_files", "data.qa_files", "data.qa_eval_files",
               "data.tokenizer", "sft.files", "sft.eval_files", "dpo.files", "dpo.eval_files",
               "dpo.reference", "avr.prompts_file", "avr.output", "constitutional.principles_file",
               "safety.toxicity_lexicon", "safety.bias_lexicon", "self_align.output")

# The remote schemes etils.epath opens, and the package its fsspec backend needs.
REMOTE_SCHEMES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}
REMOTE_EXTRA = {"gs": " (pip install 'rasr_jax[gcs]')"}


def check_path(name, value, local_only=False):
  """Raises ConfigError when `value` (a path, or comma-separated paths) names a remote store
  that cannot be opened here: a scheme epath does not know, one whose fsspec backend is not
  installed, or any remote path where `local_only`."""
  for path in str(value).split(","):
    if "://" not in path:
      continue
    scheme = path.split("://")[0]
    if local_only:
      raise ConfigError(f"{name}={value!r}: must be a local path (a bucket can be mounted on "
                        "every host, e.g. with gcsfuse, and the mounted path passed)")
    if scheme not in REMOTE_SCHEMES:
      raise ConfigError(f"{name}={value!r}: {scheme}:// is not a storage scheme this project "
                        f"opens ({', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    import fsspec  # only remote paths need it
    try:
      fsspec.get_filesystem_class("gcs" if scheme == "gs" else scheme)
    except (ImportError, ValueError):
      package = REMOTE_SCHEMES[scheme]
      raise ConfigError(f"{name}={value!r}: {scheme}:// paths need the {package} package, "
                        f"which is not installed{REMOTE_EXTRA.get(scheme, '')}") from None


def load_function(field, spec):
  """A config field's "module:function" -> the function; ConfigError naming `field` when it is
  malformed, cannot be imported, or is not callable."""
  module_name, sep, name = spec.partition(":")
  if not sep or not module_name or not name:
    raise ConfigError(f"config.{field}={spec!r}: expected module:function")
  try:
    function = getattr(importlib.import_module(module_name), name)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"config.{field}={spec!r}: cannot import it ({e})") from None
  if not callable(function):
    raise ConfigError(f"config.{field}={spec!r}: not a function")
  return function


def _fail(path, value, rule):
  raise ConfigError(f"config.{path}={value!r}: {rule}")


def _convert(cls, raw, prefix):
  """Builds dataclass `cls` from dict `raw`, checking keys and types."""
  if not isinstance(raw, dict):
    _fail(prefix.rstrip("."), raw, f"must be a section with fields of {cls.__name__}")
  hints = typing.get_type_hints(cls)
  known = [f.name for f in dataclasses.fields(cls)]
  for key in raw:
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
      _fail(prefix + key, raw[key], f"unknown field{hint}")
  values = {}
  for name in known:
    path = prefix + name
    if name not in raw:
      raise ConfigError(f"config.{path}: missing field")
    want, value = hints[name], raw[name]
    if dataclasses.is_dataclass(want):
      values[name] = _convert(want, value, path + ".")
    elif want is bool:
      if not isinstance(value, bool):
        _fail(path, value, "must be a bool")
      values[name] = value
    elif want is int:
      if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, value, "must be an int")
      values[name] = value
    elif want is float:
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, value, "must be a number")
      if not math.isfinite(value):
        _fail(path, value, "must be finite")
      values[name] = float(value)
    elif want is str:
      if not isinstance(value, str):
        _fail(path, value, "must be a string")
      values[name] = value
    elif want == int | str:  # a positive int or AUTO
      if value != AUTO and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        _fail(path, value, f'must be an int > 0 or "{AUTO}"')
      values[name] = value
    else:
      raise TypeError(f"unsupported config field type {want} for {path}")
  return cls(**values)


def _get(config, path):
  value = config
  for part in path.split("."):
    value = getattr(value, part)
  return value


def _check_names(path, value, names, allowed):
  """A comma-separated field's `names` must be distinct, non-empty and among `allowed`."""
  if not all(names) or len(set(names)) != len(names) or not set(names) <= set(allowed):
    _fail(path, value, f"must be distinct names among {', '.join(allowed)}, comma-separated")


def _check_rules(c):
  for path in _POSITIVE:
    if _get(c, path) <= 0:
      _fail(path, _get(c, path), "must be > 0")
  for path in _NON_NEGATIVE:
    if _get(c, path) < 0:
      _fail(path, _get(c, path), "must be >= 0")
  for path in _UNIT_INTERVAL:
    if not 0.0 <= _get(c, path) <= 1.0:
      _fail(path, _get(c, path), "must be in [0, 1]")
  if not 0.0 <= c.dpo.label_smoothing <= 0.5:  # above 0.5 it trains towards the rejected side
    _fail("dpo.label_smoothing", c.dpo.label_smoothing, "must be in [0, 0.5]")
  for path, choices in _CHOICES.items():
    if _get(c, path) not in choices:
      _fail(path, _get(c, path), f"must be one of {', '.join(choices)}")
  for path in PATH_FIELDS:
    check_path(f"config.{path}", _get(c, path))
  if c.metrics.wandb_project and importlib.util.find_spec("wandb") is None:
    _fail("metrics.wandb_project", c.metrics.wandb_project,
          "needs the wandb package (pip install wandb), which is optional")
  try:
    c.train.profile_range()
  except ValueError as e:
    _fail("train.profile_steps", c.train.profile_steps, str(e))
  m = c.model
  if m.num_heads % m.num_kv_heads:
    _fail("model.num_heads", m.num_heads,
          f"must be divisible by model.num_kv_heads={m.num_kv_heads}")
  if m.head_dim % 2:
    _fail("model.head_dim", m.head_dim, "must be even (rotary positions rotate pairs)")
  if m.rope_type == "llama3" and m.rope_high_freq_factor <= m.rope_low_freq_factor:
    _fail("model.rope_high_freq_factor", m.rope_high_freq_factor,
          f"must exceed model.rope_low_freq_factor={m.rope_low_freq_factor} (llama3 rope)")
  if c.data.streams and c.train.batch_size % c.data.streams:
    _fail("data.streams", c.data.streams, f"must divide train.batch_size={c.train.batch_size}")
  if c.train.grad_accum_steps != AUTO and c.train.batch_size % c.train.grad_accum_steps:
    _fail("train.batch_size", c.train.batch_size,
          f"must be divisible by train.grad_accum_steps={c.train.grad_accum_steps}")
  r = c.reflect
  _check_names("reflect.critic_dims", r.critic_dims, r.quality_dim_names, CRITIC_DIMS)
  _check_names("reflect.safety_dims", r.safety_dims, r.safety_dim_names, CRITIC_SAFETY_DIMS)
  if r.strategies.enabled:
    try:
      r.strategies.vectors()
    except ValueError as e:
      _fail("reflect.strategies.weights", r.strategies.weights, str(e))
    if not r.enabled:
      _fail("reflect.strategies.weights", r.strategies.weights,
            "chooses RASR's loss weights: it needs reflect.enabled=True")
    if not c.train.eval_batches:
      _fail("reflect.strategies.weights", r.strategies.weights,
            "measures each strategy on a held-out batch: it needs train.eval_batches > 0")
  if r.enabled and r.source != "text" and c.data.source == "files" and not c.data.qa_files:
    _fail(
        "reflect.source", r.source, "needs question/answer data: set data.qa_files, use "
        "data.source=bundled, or set reflect.source=text")
  if c.data.bundled_mix:
    try:
      c.data.bundled_weights()
    except ValueError as e:
      _fail("data.bundled_mix", c.data.bundled_mix, str(e))
    if c.data.source != "bundled":
      _fail("data.bundled_mix", c.data.bundled_mix,
            "weighs the bundled tasks: it needs data.source=bundled")
  if c.data.mixture:
    try:
      components = c.data.mixture_components()
    except ValueError as e:
      _fail("data.mixture", c.data.mixture, str(e))
    for globs, _ in components:
      check_path("config.data.mixture", globs)
    if c.data.files:
      _fail("data.mixture", c.data.mixture, "replaces data.files: set one of them")
  _check_names("self_align.tasks", c.self_align.tasks, c.self_align.task_names, SELF_ALIGN_TASKS)
  if c.data.qa_eval_files and not c.data.qa_files:
    _fail("data.qa_eval_files", c.data.qa_eval_files, "needs data.qa_files (its training split)")
  if r.enabled and r.text_rows and r.prompt_len + r.target_len > c.data.seq_len + 1:
    _fail(
        "reflect.prompt_len", r.prompt_len, f"plus reflect.target_len={r.target_len} must "
        f"fit in a row of data.seq_len + 1 = {c.data.seq_len + 1} tokens")
  sizes = c.mesh.axis_sizes()
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      _fail(f"mesh.{axis}", size, "must be > 0, or -1 to fill with the remaining devices")
  if sum(size == -1 for size in sizes.values()) > 1:
    _fail("mesh", sizes, "at most one axis may be -1")


def config_file(path):
  """The ConfigDict of a config file (`get_config()` of a Python file, as --config reads it; the
  file runs as code, so only trusted files)."""
  from etils import epath  # config loading stays light
  namespace = {}
  try:
    exec(compile(epath.Path(path).read_text(), path, "exec"), namespace)
    return namespace["get_config"]()
  except (OSError, SyntaxError, KeyError) as e:
    raise ConfigError(f"config file {path}: cannot read a get_config() from it ({e!r})") from None


def workdir_config_file(workdir):
  """Where a work directory keeps its model's config file (`interop.hf import` writes it)."""
  return os.path.join(workdir, "config.py")


def write_config_file(path, config_dict, what):
  """A config file that `config_file` (and --config) reads back as `config_dict` (a ConfigDict
  or a plain nested dict), held as JSON; `what` says in its docstring whose config it is."""
  raw = config_dict.to_dict() if hasattr(config_dict, "to_dict") else config_dict
  text = json.dumps(raw, indent=2, sort_keys=True)
  from etils import epath
  epath.Path(path).write_text(
      f'"""Config of {what}."""\n\nimport json\n\nfrom ml_collections import config_dict\n\n'
      f"_CONFIG = r'''\n{text}\n'''\n\n\ndef get_config():\n"
      "  return config_dict.ConfigDict(json.loads(_CONFIG))\n")


def load(config_dict):
  """Validates a ConfigDict (or plain dict) and returns the frozen `Config`."""
  raw = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
  config = _convert(Config, raw, "")
  _check_rules(config)
  return config


def resolve_mesh(config, num_devices):
  """Fills a -1 mesh axis and checks the mesh against the devices and the shapes it shards.

  Returns the `Config` with concrete mesh sizes (and reflection rows, unless
  train.grad_accum_steps is AUTO: training/memory_fit.py resolves each candidate).
  """
  sizes = config.mesh.axis_sizes()
  known = math.prod(s for s in sizes.values() if s != -1)
  for axis, size in sizes.items():
    if size == -1:
      if num_devices % known:
        _fail(
            f"mesh.{axis}", -1, f"cannot fill: {num_devices} devices are not divisible by "
            f"the other axes' product {known}")
      sizes[axis] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    _fail("mesh", sizes, f"the product of the axes must equal the device count {num_devices}")
  mesh = MeshConfig(**sizes, dcn_data=config.mesh.dcn_data)
  if mesh.data % mesh.dcn_data:
    _fail("mesh.dcn_data", mesh.dcn_data, f"must divide mesh.data={mesh.data}")
  from rasr_jax import sharding  # here: config errors found before this come before jax loads
  axis_sizes = mesh.axis_sizes()
  for path, axis in sharding.divisibility_rules():
    if _get(config, path) % axis_sizes[axis]:
      _fail(path, _get(config, path), f"must be divisible by mesh.{axis}={axis_sizes[axis]}")
  t = config.train
  if t.grad_accum_steps == AUTO:
    return dataclasses.replace(config, mesh=mesh)
  batch_axes = sharding.mesh_axes("act_batch")
  batch_shards = math.prod(axis_sizes[a] for a in batch_axes)
  batch_names = "*".join(f"mesh.{a}" for a in batch_axes)
  micro_batch = t.batch_size // t.grad_accum_steps
  if micro_batch % batch_shards:
    _fail(
        "train.batch_size", t.batch_size,
        f"each of the {t.grad_accum_steps} micro-batches must be divisible by the "
        f"data-parallel size {batch_names}={batch_shards}")
  return dataclasses.replace(config,
                             mesh=mesh,
                             reflect=_resolve_reflect_rows(config, batch_shards, batch_names))


def _resolve_reflect_rows(config, batch_shards, batch_names):
  """Reflection rows per global batch: batch/8 rounded up so every micro-batch shard gets rows."""
  r, t = config.reflect, config.train
  if not r.enabled:  # no reflection rows to place
    return r
  unit = batch_shards * t.grad_accum_steps * (2 if r.source == "mixed" else 1)
  rows = r.rows or rounding.round_up(rounding.ceil_div(t.batch_size, 8), unit)
  halves = "2*" if r.source == "mixed" else ""  # mixed: as many text as question/answer rows
  if rows % unit or rows > t.batch_size:
    _fail(
        "reflect.rows", r.rows, f"must be a multiple of {halves}{batch_names}*"
        f"train.grad_accum_steps={unit} and at most train.batch_size={t.batch_size}")
  return dataclasses.replace(r, rows=rows)


def to_dict(config):
  """A JSON-ready nested dict of the config (for checkpoint metadata and logs)."""
  return dataclasses.asdict(config)
