"""`--mode=compile`: the sharded train step compiled ahead of time from abstract inputs.

Nothing is allocated: the state and the batch are ShapeDtypeStructs carrying their shardings,
so a config for any size can be checked on the devices present (for example 8 fake CPU
devices standing for an 8-GPU host). XLA's memory analysis of the compiled step gives the
bytes each device needs; `describe`'s estimate (parameters and optimizer state only) is printed
beside it.
"""

import time

import jax

from rasr_jax import sharding
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.modes import describe
from rasr_jax.training import checkpoint, optim, train_state
from rasr_jax.training import step as train_step

GIB = 1024**3


def compile_report(config):
  """A JSON-ready dict: per-device bytes of the compiled step (`config` has a resolved mesh)."""
  mesh = sharding.make_mesh(config.mesh)
  graphdef, abstract, specs = train_state.abstract_state(config)
  shardings = train_state.to_shardings(specs, mesh)
  tx = optim.make_optimizer(config.train, abstract.params)
  step_fn = train_step.jit_train_step(
      train_step.make_train_step(graphdef, config, tx, tok_lib.TRAINED_MARKER_IDS), shardings, mesh)
  tokens = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len + 1),
                                "int32",
                                sharding=sharding.batch_sharding(mesh))
  start = time.perf_counter()
  with sharding.activate(mesh):
    compiled = step_fn.lower(checkpoint.with_shardings(abstract, shardings), tokens).compile()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  sizes = {
      "arguments": memory.argument_size_in_bytes,
      "outputs": memory.output_size_in_bytes,
      "aliased": memory.alias_size_in_bytes,
      "temporaries": memory.temp_size_in_bytes,
      "generated_code": memory.generated_code_size_in_bytes
  }
  # Donated state: outputs alias arguments, so they are counted once.
  peak = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]
          + sizes["generated_code"])
  estimate = describe.describe(config, jax.device_count())
  return {
      "mesh": config.mesh.axis_sizes(),
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "reflect": config.reflect.enabled,
      "remat_policy": config.model.remat_policy,
      "batch_size": config.train.batch_size,
      "seq_len": config.data.seq_len,
      "compile_seconds": round(seconds, 1),
      "bytes_per_device": dict(sizes, total=peak),
      "gib_per_device": round(peak / GIB, 2),
      "describe_bytes_per_device": estimate["bytes_per_device"],
  }
