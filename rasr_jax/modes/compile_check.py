"""`--mode=compile`: the sharded train step compiled ahead of time from abstract inputs.

Nothing is allocated: the state and the batch are ShapeDtypeStructs carrying their shardings,
so a config for any size can be checked on the devices present (for example 8 fake CPU
devices standing for an 8-GPU host). XLA's memory analysis of the compiled step gives the
bytes each device needs; `describe`'s estimate (parameters and optimizer state only) is printed
beside it. AUTO settings are chosen first (training/memory_fit.py) and the choice printed.
"""

import dataclasses

import jax

from rasr_jax.modes import describe
from rasr_jax.training import memory_fit


def compile_report(config):
  """A JSON-ready dict: per-device bytes of the compiled step (`config` has a resolved mesh)."""
  config, fit = memory_fit.resolve_auto(config)
  memory = fit.chosen.memory if fit else memory_fit.step_memory(config)
  sizes = {
      field.name: getattr(memory, field.name)
      for field in dataclasses.fields(memory)
      if field.name != "compile_seconds"
  }
  estimate = describe.describe(config, jax.device_count())
  report = {
      "mesh": config.mesh.axis_sizes(),
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "reflect": config.reflect.enabled,
      "remat_policy": config.model.remat_policy,
      "grad_accum_steps": config.train.grad_accum_steps,
      "batch_size": config.train.batch_size,
      "seq_len": config.data.seq_len,
      "compile_seconds": round(memory.compile_seconds, 1),
      "bytes_per_device": dict(sizes, total=memory.total),
      "gib_per_device": memory_fit.to_gib(memory.total),
      "describe_bytes_per_device": estimate["bytes_per_device"],
  }
  if fit:
    report["memory_fit"] = fit.report()
  return report
