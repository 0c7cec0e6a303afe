"""What the compiled train step needs per device, and the "auto" settings that make it fit.

`step_memory` compiles the real sharded train step ahead of time from abstract inputs (nothing
is allocated) and reads XLA's memory analysis. `resolve_auto` turns `train.grad_accum_steps=auto`
and `model.remat_policy=auto` into numbers before training: remat costs FLOPs (a recomputed
forward pass) while accumulation only makes the matmuls smaller, so it takes the cheapest remat
policy that fits with some accumulation, and with it the smallest accumulation that fits.
"Fits" means at most (1 - HEADROOM) of the device's memory (the smaller of what the device
reports and `train.memory_limit_gib`), the headroom standing for what the analysis does not see
(fragmentation, the runtime's own buffers, the input pipeline's device copies).
"""

import dataclasses
import math
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rasr_jax import config as config_lib
from rasr_jax import sharding, tasks
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.data.packing import PackedRows
from rasr_jax.reflection import answers
from rasr_jax.reflection.rows import ReflectRows
from rasr_jax.training import checkpoint, optim, safety_quality, train_state
from rasr_jax.training import step as train_step

GIB = 1024**3
HEADROOM = 0.10  # the share of the device's memory a fitting step leaves unused
PIECE_BYTES = 16  # bytes of the longest token piece assumed without a tokenizer


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes per device of one compiled train step (XLA's memory analysis)."""
  arguments: int
  outputs: int
  aliased: int  # outputs living in donated arguments' buffers
  temporaries: int
  generated_code: int
  compile_seconds: float

  @property
  def total(self) -> int:
    """The step's peak: the donated state counted once."""
    return (self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code)

  @classmethod
  def of(cls, compiled, compile_seconds=0.0) -> "StepMemory":
    """The memory analysis of `compiled` (a jax Compiled step)."""
    memory = compiled.memory_analysis()
    return cls(arguments=memory.argument_size_in_bytes,
               outputs=memory.output_size_in_bytes,
               aliased=memory.alias_size_in_bytes,
               temporaries=memory.temp_size_in_bytes,
               generated_code=memory.generated_code_size_in_bytes,
               compile_seconds=compile_seconds)


def to_gib(n) -> float:
  """Bytes `n` in GiB, rounded for reports."""
  return round(n / GIB, 2)


@dataclasses.dataclass(frozen=True)
class Candidate:
  grad_accum_steps: int
  remat_policy: str
  memory: StepMemory


@dataclasses.dataclass(frozen=True)
class Fit:
  """How the AUTO settings were chosen: every compiled candidate, in order, and the chosen one."""
  limit_bytes: int
  usable_bytes: int  # (1 - HEADROOM) * limit_bytes
  tried: tuple[Candidate, ...]
  chosen: Candidate

  def report(self) -> dict:
    """A JSON-ready summary (--mode=compile prints it)."""
    entry = lambda c: {
        "grad_accum_steps": c.grad_accum_steps,
        "remat_policy": c.remat_policy,
        "gib_per_device": to_gib(c.memory.total),
        "fits": c.memory.total <= self.usable_bytes
    }
    return {
        "limit_gib": to_gib(self.limit_bytes),
        "usable_gib": to_gib(self.usable_bytes),
        "tried": [entry(c) for c in self.tried],
        "chosen": entry(self.chosen)
    }


def _abstract_rows(r, reference_width, batch_sharding):
  """Shapes of the batch's question/answer ReflectRows, or None."""
  if not r.qa_rows:
    return None
  shapes = {
      "prompt": ((r.prompt_len,), "int32"),
      "prompt_valid": ((r.prompt_len,), "bool"),
      "target": ((r.target_len,), "int32"),
      "target_valid": ((r.target_len,), "bool"),
      "checker": ((), "int32"),
      "reference": ((reference_width,), "uint8"),
      "reference_len": ((), "int32"),
      "task": ((), "int32"),
      "quantity": ((tasks.MAX_QUANTITIES, tasks.QUANTITY_BYTES), "uint8"),
      "quantity_len": ((tasks.MAX_QUANTITIES,), "int32"),
  }
  return ReflectRows(
      **{
          name: jax.ShapeDtypeStruct((r.qa_rows, *shape), dtype, sharding=batch_sharding)
          for name, (shape, dtype) in shapes.items()
      })


def _stand_in_safety(config):
  """A SafetyQuality of the right shapes for compiling (no tokenizer at hand): every text
  label safe, every id ordinary. None without reflect.safety_dims."""
  if not config.reflect.safety_dim_names:
    return None
  return safety_quality.SafetyQuality(safety_quality.all_safe,
                                      np.arange(config.model.vocab_size, dtype=np.int32))


def step_memory(config, objective=None) -> StepMemory:
  """Per-device bytes of the compiled train step for `config` (mesh and reflection rows resolved,
  no AUTO left), on the devices present: pretraining's, or `objective`'s (a
  train_step.Objective with `abstract_rows`) on its own rows."""
  mesh = sharding.make_mesh(config.mesh)
  graphdef, abstract, specs = train_state.abstract_state(config)
  shardings = train_state.to_shardings(specs, mesh)
  tx = optim.make_optimizer(config.train, abstract.params)
  pieces = answers.PieceBytes(np.zeros((config.model.vocab_size, PIECE_BYTES), np.uint8),
                              np.zeros((config.model.vocab_size,), np.int32))
  step_fn = train_step.jit_train_step(
      train_step.make_train_step(graphdef,
                                 config,
                                 tx,
                                 tok_lib.TRAINED_MARKER_IDS,
                                 pieces=pieces if config.reflect.qa_rows else None,
                                 safety=_stand_in_safety(config),
                                 objective=objective), shardings, mesh)
  batch = sharding.batch_sharding(mesh)
  tokens = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len + 1),
                                "int32",
                                sharding=batch)
  if objective is None:
    rows = PackedRows(tokens, tokens if config.data.document_masking else None)
    qa_rows = _abstract_rows(config.reflect, pieces.text_bytes(config.reflect.target_len), batch)
  else:
    rows = objective.abstract_rows(config.train.batch_size, config.data.seq_len + 1, batch)
    qa_rows = None
  start = time.perf_counter()
  with sharding.activate(mesh):
    compiled = step_fn.lower(checkpoint.with_shardings(abstract, shardings), rows,
                             qa_rows).compile()
  return StepMemory.of(compiled, time.perf_counter() - start)


def device_memory_limit(config) -> int:
  """Bytes of memory per device the AUTO settings fit into: the smaller of the device's reported
  limit (on GPUs the allocator's share, XLA_PYTHON_CLIENT_MEM_FRACTION) and the config's cap."""
  limits = [int(config.train.memory_limit_gib * GIB)] if config.train.memory_limit_gib else []
  stats = jax.local_devices()[0].memory_stats() or {}
  limits += [int(stats["bytes_limit"])] if "bytes_limit" in stats else []
  if not limits:
    raise config_lib.ConfigError(
        f"config.train.memory_limit_gib=0: {jax.devices()[0].device_kind} devices report no "
        "memory limit to fit the auto settings into; set the accelerator's (GiB per device)")
  if jax.process_count() == 1:
    return min(limits)
  # Every process searches with process 0's limit, so all of them choose the same settings.
  gib = multihost_utils.broadcast_one_to_all(np.float32(min(limits) / GIB))
  return int(float(gib) * GIB)


def _accumulations(config):
  """(grad_accum_steps, config resolved with it) for every accumulation the batch and mesh
  allow without changing how many rows reflect, smallest first (`config`'s mesh resolved).

  Reflection rows are split over the micro-batches, at least one per data shard in each, so a
  larger accumulation would round reflect.rows up (B/8 by default) and change the method.
  """
  devices = math.prod(config.mesh.axis_sizes().values())
  resolved = {}
  for accum in range(1, config.train.batch_size + 1):
    if config.train.batch_size % accum:
      continue
    train = dataclasses.replace(config.train, grad_accum_steps=accum)
    try:
      resolved[accum] = config_lib.resolve_mesh(dataclasses.replace(config, train=train), devices)
    except config_lib.ConfigError:
      continue
  rows = min((c.reflect.rows for c in resolved.values()), default=0)
  return [(accum, c) for accum, c in resolved.items() if c.reflect.rows == rows]


def resolve_auto(config, objective=None) -> tuple[config_lib.Config, Fit | None]:
  """`config` (mesh resolved) with any AUTO grad_accum_steps / remat_policy chosen for
  pretraining's step or `objective`'s (see `step_memory`), and how they were chosen (None when
  neither is AUTO). Raises ConfigError when nothing fits.

  Per policy, the smallest fitting accumulation is found by bisection: a step's memory does not
  grow with the accumulation (each micro-batch is smaller).
  """
  auto_accum = config.train.grad_accum_steps == config_lib.AUTO
  auto_remat = config.model.remat_policy == config_lib.AUTO
  if not (auto_accum or auto_remat):
    return config, None
  limit = device_memory_limit(config)
  usable = int(limit * (1 - HEADROOM))
  accumulations = (_accumulations(config) if auto_accum else [(config.train.grad_accum_steps,
                                                               config)])
  if not accumulations:
    raise config_lib.ConfigError(
        f"config.train.grad_accum_steps=auto: no accumulation divides "
        f"train.batch_size={config.train.batch_size} into micro-batches the mesh "
        f"{config.mesh.axis_sizes()} (and reflect.rows) can split")
  policies = config_lib.REMAT_POLICIES if auto_remat else (config.model.remat_policy,)
  tried = []

  def measure(index, policy):
    accum, resolved = accumulations[index]
    candidate_config = dataclasses.replace(resolved,
                                           model=dataclasses.replace(resolved.model,
                                                                     remat_policy=policy))
    candidate = Candidate(accum, policy, step_memory(candidate_config, objective))
    tried.append(candidate)
    logging.info(
        "memory fit: grad_accum_steps=%d remat_policy=%s needs %.2f GiB per device "
        "(usable %.2f GiB)", accum, policy, candidate.memory.total / GIB, usable / GIB)
    return candidate, candidate_config

  for policy in policies:
    last, last_config = measure(len(accumulations) - 1, policy)
    if last.memory.total > usable:
      continue
    best, best_config = last, last_config
    low, high = 0, len(accumulations) - 1  # accumulations[high] fits
    while low < high:
      middle = (low + high) // 2
      candidate, candidate_config = measure(middle, policy)
      if candidate.memory.total <= usable:
        high, best, best_config = middle, candidate, candidate_config
      else:
        low = middle + 1
    fit = Fit(limit, usable, tuple(tried), best)
    logging.info("memory fit: chose grad_accum_steps=%d remat_policy=%s (%.2f GiB per device)",
                 best.grad_accum_steps, best.remat_policy, best.memory.total / GIB)
    return best_config, fit
  smallest = min(tried, key=lambda c: c.memory.total)
  what = " and ".join(f"{name}=auto" for name, auto in (("train.grad_accum_steps", auto_accum),
                                                        ("model.remat_policy", auto_remat)) if auto)
  raise config_lib.ConfigError(
      f"config.{what}: no setting fits {usable / GIB:.2f} GiB per device ({1 - HEADROOM:.0%} of "
      f"{limit / GIB:.2f}); the smallest need is {smallest.memory.total / GIB:.2f} GiB "
      f"(grad_accum_steps={smallest.grad_accum_steps}, remat_policy={smallest.remat_policy}): "
      "more devices, a smaller train.batch_size or data.seq_len, or fewer reflecting rows "
      "(reflect.rows) so that more micro-batches can split them")
