"""RASR step time over standard step time, in one process, on the same batch.

  python benchmarks/rasr_overhead.py --config=configs/bench.py [--steps=5]

Times the standard step (reflection off) and RASR steps on the same batch and shapes: the
default reflection settings of the config (R = 3), the same with learned stopping in effect and
every row stopping at its first critique (`ratio_stopped`: a row stopped at k = 0 is decoded
once more, for the controller's target, not at every later iteration), then R = 1 and R = 3 with
every row reflecting; and the standard step without document masking (plain causal attention, no
[B, 1, T, T] mask), for the mask's cost. One step of each variant in turn, --steps rounds,
medians (see common.py). Prints one JSON object.

`per_pass_s` breaks the default RASR step's extra time down, from jitted pieces of it timed in the
same rounds (each alone, so fusion across them is lost): the reflection rows and their first draft
y(0) (`draft_decoding`, times R + 1 when drafts are free-running: y(0) and one candidate per
iteration), the critic pass (`critic`, times R), the refine pass with its loss (`refine`, times R),
the TrueQuality oracle on the rows' drafts (`oracle`, times 2R + 1: y(k) and the candidate y(k+1) of
each iteration, and the delivered draft), the rest of the forward pass (`forward_other`: RASR's
forward minus the standard forward minus those), and `backward`: what the RASR step adds to the
standard step beyond its forward pass (gradients of every pass and the optimizer's update of the
heads).
"""

import dataclasses
import json
import platform

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from common import batch_and_pieces, bundled_tokenizer, compiled_step, interleaved_medians
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.data import packing
from rasr_jax.reflection import quality, steps
from rasr_jax.reflection.layout import Layout
from rasr_jax.training import losses, train_state
from rasr_jax.training import step as train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench.py", "Benchmark config.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed rounds (after 2 warm-up steps per variant).")


def forward_call(config, mesh, tokenizer):
  """A zero-argument call of the loss's forward pass alone for `config` (fresh parameters)."""
  graphdef, _, _ = train_state.abstract_state(config)
  state, _ = train_state.init_state(config, mesh)
  (packed, qa), pieces = batch_and_pieces(config, mesh, tokenizer)
  loss_fn = train_step.make_loss_fn(graphdef, config, tokenizer.marker_ids, pieces=pieces)
  forward = jax.jit(lambda params: loss_fn(params, packed, qa, packing.target_count(packed),
                                           jax.random.key(0), state.tau, jnp.float32(0.5))[0])
  return lambda: forward(state.params)


def pass_calls(config, mesh, tokenizer):
  """Zero-argument calls of the RASR forward pieces for `config` (fresh parameters): the
  reflection rows with y(0), one critic pass, one refine pass with its loss, one call of the
  TrueQuality oracle."""
  r, ids = config.reflect, tokenizer.marker_ids
  graphdef, _, _ = train_state.abstract_state(config)
  state, _ = train_state.init_state(config, mesh)
  (packed, qa), pieces = batch_and_pieces(config, mesh, tokenizer)
  key, progress = jax.random.key(0), jnp.float32(0.5)
  inputs, _, _, positions, mask = packing.inputs_and_targets(packed)

  logits = jax.jit(lambda params: nnx.merge(graphdef, params)
                   (inputs, positions=positions, mask=mask)[0])(state.params)  # text windows' y(0)
  first_drafts = jax.jit(lambda params, logits: train_step.reflection_rows(
      graphdef, params, packed.tokens, logits, qa, r, key, ids))
  rows, draft, length = first_drafts(state.params, logits)
  draft_valid = jnp.arange(draft.shape[1])[None] < length[:, None]

  def critique(params):
    model = nnx.merge(graphdef, params)
    return steps.critique(model, model.embed_tokens(rows.prompt), rows.prompt_valid, draft,
                          draft_valid, progress, ids)

  critic = jax.jit(critique)
  live, _ = critic(state.params)

  @jax.jit
  def refine(params, live):
    model = nnx.merge(graphdef, params)
    logits = steps.refine_logits(model, model.embed_tokens(rows.prompt), rows.prompt_valid, draft,
                                 draft_valid, live, rows.target, ids,
                                 Layout(r.prompt_len, r.target_len,
                                        r.critique_len), r.draft_mode == "teacher_forced")
    return losses.reflection_row_losses(logits, rows.target, rows.target_valid)

  oracle = jax.jit(lambda draft, length: quality.row_quality(draft, length, rows, pieces))
  return {
      "pass_oracle": lambda: oracle(draft, length),
      "pass_first_drafts": lambda: first_drafts(state.params, logits),
      "pass_critic": lambda: critic(state.params),
      "pass_refine": lambda: refine(state.params, live),
  }


def per_pass(times, config):
  """Seconds per step of each part of the default RASR step's extra time (module docstring)."""
  r = config.reflect
  drafts = r.iterations + 1 if r.draft_mode == "autoregressive" else 1
  parts = {
      "draft_decoding": times["pass_first_drafts"] * drafts,
      "critic": times["pass_critic"] * r.iterations,
      "refine": times["pass_refine"] * r.iterations,
      "oracle": times["pass_oracle"] * (2 * r.iterations + 1),
  }
  parts["forward_other"] = (times["forward_default"] - times["forward_standard"]
                            - sum(parts.values()))
  parts["backward"] = ((times["default"] - times["forward_default"]) -
                       (times["standard"] - times["forward_standard"]))
  return parts


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
      # a controller that stops every row at its first critique, as the evidence runs' did
      "default_stopped": variant(enabled=True, stop_warmup=0.0, stop_budget=0.0),
      "k1_all_rows": variant(enabled=True, iterations=1, rows=rows),
      "k3_all_rows": variant(enabled=True, iterations=3, rows=rows),
  }
  r = variants["default"].reflect
  with sharding.activate(mesh):
    calls = {
        "forward_standard": forward_call(variants["standard"], mesh, tokenizer),
        "forward_default": forward_call(variants["default"], mesh, tokenizer),
        **pass_calls(variants["default"], mesh, tokenizer)
    }
    runs = {name: compiled_step(c, mesh, tokenizer) for name, c in variants.items()}
    step, state, batch = runs["default_stopped"]  # tau at its floor: every row stops at k = 0
    runs["default_stopped"] = step, state.replace(tau=jnp.float32(train_step.TAU_RANGE[0])), batch
    times = interleaved_medians(runs, _STEPS.value, extra_calls=calls)
  breakdown = per_pass(times, variants["default"])
  standard = times.pop("standard")
  print(
      json.dumps(
          {
              "benchmark": "rasr_overhead",
              "standard_step_s": standard,
              "rasr_step_s": times["default"],
              "ratio": times["default"] / standard,
              "ratio_stopped": times["default_stopped"] / standard,
              "ratio_k1_all_rows": times["k1_all_rows"] / standard,
              "ratio_k3_all_rows": times["k3_all_rows"] / standard,
              "document_mask_ratio": standard / times["standard_no_document_mask"],
              "step_s": times,
              "per_pass_s": breakdown,
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
