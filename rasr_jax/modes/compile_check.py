"""`--mode=compile`: the sharded train step compiled ahead of time from abstract inputs.

Nothing is allocated: the state and the batch are ShapeDtypeStructs carrying their shardings,
so a config for any size can be checked on the devices present (for example 8 fake CPU
devices standing for an 8-GPU host). XLA's memory analysis of the compiled step gives the
bytes each device needs; `describe`'s estimate (parameters and optimizer state only) is printed
beside it.
"""

import time

import jax
import numpy as np

from rasr_jax import sharding
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.data.packing import PackedRows
from rasr_jax.modes import describe
from rasr_jax.reflection import answers
from rasr_jax.reflection.rows import ReflectRows
from rasr_jax.training import checkpoint, optim, train_state
from rasr_jax.training import step as train_step

GIB = 1024**3

PIECE_BYTES = 16  # bytes of the longest token piece assumed without a tokenizer


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
  }
  return ReflectRows(
      **{
          name: jax.ShapeDtypeStruct((r.qa_rows, *shape), dtype, sharding=batch_sharding)
          for name, (shape, dtype) in shapes.items()
      })


def compile_report(config):
  """A JSON-ready dict: per-device bytes of the compiled step (`config` has a resolved mesh)."""
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
                                 pieces=pieces if config.reflect.qa_rows else None), shardings,
      mesh)
  batch = sharding.batch_sharding(mesh)
  tokens = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len + 1),
                                "int32",
                                sharding=batch)
  packed = PackedRows(tokens, tokens if config.data.document_masking else None)
  qa_rows = _abstract_rows(config.reflect, pieces.text_bytes(config.reflect.target_len), batch)
  start = time.perf_counter()
  with sharding.activate(mesh):
    compiled = step_fn.lower(checkpoint.with_shardings(abstract, shardings), packed,
                             qa_rows).compile()
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
