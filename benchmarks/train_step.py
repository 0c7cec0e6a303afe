"""Step time, tokens/s and MFU of the standard train step, with the matmul peak measured here.

  python benchmarks/train_step.py --config=configs/bench.py [--steps=5] \
      [--config.model.dtype=bfloat16]

Prints one JSON object. The MFU denominator is the median FLOP/s of a jitted float32 2048^3
matmul measured in the same process (on accelerators: the vendor peak from rasr_jax.training.flops).
"""

import json
import platform

import jax
from absl import app, flags
from ml_collections import config_flags

from common import batch_and_pieces, bundled_tokenizer, time_steps
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.training import flops as flops_lib
from rasr_jax.training import optim, train_state
from rasr_jax.training import step as train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench.py", "Benchmark config.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")


def main(argv):
  del argv
  config = config_lib.resolve_mesh(config_lib.load(_CONFIG.value), jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  graphdef, abstract, _ = train_state.abstract_state(config)
  state, shardings = train_state.init_state(config, mesh)
  tx = optim.make_optimizer(config.train, abstract.params)
  tokenizer = bundled_tokenizer(config)
  batch, pieces = batch_and_pieces(config, mesh, tokenizer)
  step_fn = train_step.jit_train_step(
      train_step.make_train_step(graphdef, config, tx, tokenizer.marker_ids, pieces=pieces),
      shardings, mesh)
  rows, seq = config.train.batch_size, config.data.seq_len
  with sharding.activate(mesh):
    median, _ = time_steps(step_fn, state, batch, _STEPS.value)
  on_cpu = jax.devices()[0].platform == "cpu"
  peak = flops_lib.measure_matmul_peak(2048) if on_cpu else flops_lib.peak_flops_per_device(0.0)
  flops = flops_lib.flops_per_step(config)
  print(
      json.dumps(
          {
              "benchmark": "train_step",
              "step_time_s_median": median,
              "tokens_per_sec": rows * seq / median,
              "mfu": flops / median / (peak * jax.device_count()),
              "peak_flops_per_device": peak,
              "flops_per_step": flops,
              "params": sum(x.size for x in jax.tree.leaves(abstract.params)),
              "shape": {
                  "d_model": config.model.d_model,
                  "layers": config.model.num_layers,
                  "seq_len": seq,
                  "batch": rows,
                  "dtype": config.model.dtype
              },
              "jax": jax.__version__,
              "device": jax.devices()[0].device_kind,
              "devices": jax.device_count(),
              "python": platform.python_version(),
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
