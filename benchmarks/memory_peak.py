"""XLA's memory analysis of the train step against the peak the device measures running it.

  PYTHONPATH=. python benchmarks/memory_peak.py --config=configs/400m.py:cpu_1 \
      [--config.train.memory_limit_gib=16] [--steps=3]

Chooses the config's auto settings as a run does (training/memory_fit.py: the analysis of the
compiled step, ahead of time), then runs --steps real steps of the chosen step on random tokens
and reads the device's peak bytes in use (`memory_stats()`: GPUs and TPUs report it, CPUs do
not). Prints one JSON object: the analysis's bytes per device, the measured peak, and the peak
over the analysis (above 1: the analysis under-counts, and memory_fit.HEADROOM must cover it).
"""

import json

import jax
from absl import app, flags
from ml_collections import config_flags

from common import batch_and_pieces, bundled_tokenizer
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.training import memory_fit, optim, train_state
from rasr_jax.training import step as train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config to measure.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps run before the peak is read.")


def main(argv):
  del argv
  config = config_lib.resolve_mesh(config_lib.load(_CONFIG.value), jax.device_count())
  config, fit = memory_fit.resolve_auto(config)
  analysis = fit.chosen.memory if fit else memory_fit.step_memory(config)
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = bundled_tokenizer(config) if config.reflect.qa_rows else None
  marker_ids = tokenizer.marker_ids if tokenizer else tok_lib.TRAINED_MARKER_IDS
  graphdef, abstract, _ = train_state.abstract_state(config)
  with sharding.activate(mesh):
    state, shardings = train_state.init_state(config, mesh)
    batch, pieces = batch_and_pieces(config, mesh, tokenizer)
    tx = optim.make_optimizer(config.train, abstract.params)
    step = train_step.jit_train_step(
        train_step.make_train_step(graphdef, config, tx, marker_ids, pieces=pieces), shardings,
        mesh)
    for _ in range(_STEPS.value):
      state, out = step(state, *batch)
    jax.block_until_ready(out)
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" not in stats:
    raise SystemExit(f"error: {jax.devices()[0].device_kind} devices report no peak memory "
                     "(memory_stats); run this on a GPU or TPU")
  gib = lambda n: round(n / memory_fit.GIB, 3)
  print(
      json.dumps(
          {
              "benchmark": "memory_peak",
              "device": jax.devices()[0].device_kind,
              "mesh": config.mesh.axis_sizes(),
              "grad_accum_steps": config.train.grad_accum_steps,
              "remat_policy": config.model.remat_policy,
              "reflect": config.reflect.enabled,
              "batch_size": config.train.batch_size,
              "seq_len": config.data.seq_len,
              "memory_fit": fit.report() if fit else None,
              "analysis_bytes": analysis.total,
              "peak_bytes": stats["peak_bytes_in_use"],
              "analysis_gib": gib(analysis.total),
              "peak_gib": gib(stats["peak_bytes_in_use"]),
              "peak_over_analysis": stats["peak_bytes_in_use"] / analysis.total,
              "headroom": memory_fit.HEADROOM,
              "device_limit_gib": gib(stats.get("bytes_limit", 0)),
              "jax": jax.__version__,
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
