"""XLA's memory analysis of the train step against the peak the device measures running it.

  PYTHONPATH=. python benchmarks/memory_peak.py --config=configs/400m.py:gpu_1 \
      [--config.train.memory_limit_gib=24] [--steps=3]

Chooses the config's auto settings as a run does (training/memory_fit.py: each candidate compiled
ahead of time from abstract inputs), compiles the chosen step for a batch of random tokens, runs
it --steps times after two warm-up steps, and reads the devices' peak bytes in use
(`memory_stats()`: GPUs and TPUs report it, CPUs do not, so there it stops at start-up with one
`error:` line). Prints one JSON object: the analysis of the step that ran, the estimate the
choice was made on, the peak before and after the steps (the peak counts the whole process, so
the figure is clean only where the steps raised it), and the peak over the analysis (above 1:
the analysis under-counts, and memory_fit.HEADROOM must cover it).
"""

import json
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from common import bundled_tokenizer, compiled_step, time_steps
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.training import memory_fit

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config to measure.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps (after 2 warm-up steps).")


def peak_bytes():
  """The largest peak bytes in use over this process's devices, or None where they report none."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  return None if None in peaks else max(peaks)


def main(argv):
  del argv
  if peak_bytes() is None:
    print(
        f"error: {jax.devices()[0].device_kind} devices report no peak memory (memory_stats); "
        "run this on a GPU or TPU",
        file=sys.stderr)
    sys.exit(2)
  config = config_lib.resolve_mesh(config_lib.load(_CONFIG.value), jax.device_count())
  config, fit = memory_fit.resolve_auto(config)
  estimate = fit.chosen.memory if fit else memory_fit.step_memory(config)
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = bundled_tokenizer(config) if config.reflect.qa_rows else None
  with sharding.activate(mesh):
    step, state, batch = compiled_step(config, mesh, tokenizer)
    compiled = step.lower(state, *batch).compile()
    before = peak_bytes()
    step_s, _ = time_steps(compiled, state, batch, _STEPS.value)
  analysis, after = memory_fit.StepMemory.of(compiled).total, peak_bytes()
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
              "analysis_bytes": analysis,
              "estimate_bytes": estimate.total,
              "peak_bytes_before_steps": before,
              "peak_bytes": after,
              "analysis_gib": memory_fit.to_gib(analysis),
              "peak_gib": memory_fit.to_gib(after),
              "peak_over_analysis": after / analysis,
              "headroom": memory_fit.HEADROOM,
              "step_s": step_s,
              "jax": jax.__version__,
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
