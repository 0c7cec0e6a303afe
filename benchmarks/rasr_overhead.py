"""RASR step time over standard step time, in one process, on the same batch.

  python benchmarks/rasr_overhead.py --config=configs/bench.py [--steps=5]

Times the standard step (reflection off) and RASR steps on the same batch and shapes: the
default reflection settings of the config (R = 3), then R = 1 and R = 3 with every row
reflecting; and the standard step without document masking (plain causal attention, no
[B, 1, T, T] mask), for the mask's cost. One step of each variant in turn, --steps rounds,
medians (see common.py). Prints one JSON object.
"""

import dataclasses
import json
import platform

import jax
from absl import app, flags
from ml_collections import config_flags

from common import batch_and_pieces, bundled_tokenizer, interleaved_medians
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.training import optim, train_state
from rasr_jax.training import step as train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench.py", "Benchmark config.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed rounds (after 2 warm-up steps per variant).")


def compiled_step(config, mesh, tokenizer):
  """(jitted train step, fresh state, batch) for `config`."""
  graphdef, abstract, _ = train_state.abstract_state(config)
  state, shardings = train_state.init_state(config, mesh)
  tx = optim.make_optimizer(config.train, abstract.params)
  batch, pieces = batch_and_pieces(config, mesh, tokenizer)
  step = train_step.make_train_step(graphdef, config, tx, tokenizer.marker_ids, pieces=pieces)
  return train_step.jit_train_step(step, shardings, mesh), state, batch


def main(argv):
  del argv
  base = config_lib.load(_CONFIG.value)
  mesh = sharding.make_mesh(config_lib.resolve_mesh(base, jax.device_count()).mesh)
  rows, seq = base.train.batch_size, base.data.seq_len
  tokenizer = bundled_tokenizer(base)

  def variant(document_masking=True, **reflect):  # resolved like a run of it
    changed = dataclasses.replace(base,
                                  reflect=dataclasses.replace(base.reflect, **reflect),
                                  data=dataclasses.replace(base.data,
                                                           document_masking=document_masking))
    return config_lib.resolve_mesh(changed, jax.device_count())

  variants = {
      "standard": variant(enabled=False),
      "standard_no_document_mask": variant(document_masking=False, enabled=False),
      "default": variant(enabled=True),
      "k1_all_rows": variant(enabled=True, iterations=1, rows=rows),
      "k3_all_rows": variant(enabled=True, iterations=3, rows=rows),
  }
  r = variants["default"].reflect
  with sharding.activate(mesh):
    times = interleaved_medians(
        {
            name: compiled_step(c, mesh, tokenizer) for name, c in variants.items()
        }, _STEPS.value)
  standard = times.pop("standard")
  print(
      json.dumps(
          {
              "benchmark": "rasr_overhead",
              "standard_step_s": standard,
              "rasr_step_s": times["default"],
              "ratio": times["default"] / standard,
              "ratio_k1_all_rows": times["k1_all_rows"] / standard,
              "ratio_k3_all_rows": times["k3_all_rows"] / standard,
              "document_mask_ratio": standard / times["standard_no_document_mask"],
              "step_s": times,
              "reflection": {
                  "iterations": r.iterations,
                  "rows": r.rows,
                  "batch": rows,
                  "prompt_len": r.prompt_len,
                  "target_len": r.target_len,
                  "draft_mode": r.draft_mode,
                  "source": r.source
              },
              "shape": {
                  "d_model": base.model.d_model,
                  "layers": base.model.num_layers,
                  "seq_len": seq
              },
              "jax": jax.__version__,
              "device": jax.devices()[0].device_kind,
              "python": platform.python_version(),
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
