"""Decoding throughput: batched greedy prefill and decode, the full draft-critique-refine loop,
and HuggingFace `LlamaForCausalLM.generate` on the same shape, in one process.

  python benchmarks/decode.py --config=configs/bench.py [--batch=8 --prompt_len=128
      --new_tokens=128 --rounds=5]

Every row decodes exactly --new_tokens tokens (no <eos> stop) from random weights, fp32, CPU.
Timings are interleaved medians (see common.py). Tokens/s count generated tokens of the whole
batch: prefill tokens/s = batch * prompt_len / prefill time; decode tokens/s = batch *
new_tokens / (generate time - prefill time), the same definition for both frameworks. The
HuggingFace comparison runs when torch and transformers are installed. Prints one JSON object.
"""

import dataclasses
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from common import hf_model, interleaved_call_medians
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.generation import generate
from rasr_jax.training import train_state

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench.py", "Benchmark config.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows decoded together.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Generated tokens per row (per draft).")
_ITERATIONS = flags.DEFINE_integer("iterations", 3, "Refinements in the reflection loop.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (after 2 warm-up calls each).")

IDS = tok_lib.TRAINED_MARKER_IDS


def jax_calls(config, prompt, new_tokens, iterations):
  """Zero-argument callables: prefill only, draft generation, and the full reflection loop."""
  mesh = sharding.make_mesh(config.mesh)
  graphdef, params = nnx.split(train_state.build_model(config, config.seed), nnx.Param)
  params = nnx.to_pure_dict(params)
  rows, prompt_len = prompt.shape
  valid = jnp.ones(prompt.shape, bool)
  keys = jax.random.split(jax.random.key(0), rows)

  @jax.jit
  def prefill(params, prompt):
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(rows, prompt_len + new_tokens)
    hidden, cache = model.cached_hidden_states(model.embed_tokens(prompt), cache)
    return model.logits(hidden[:, -1:]), cache

  def generator(reflect):
    options = generate.GenerateOptions(max_new_tokens=new_tokens,
                                       reflect=reflect,
                                       iterations=iterations,
                                       eos_id=None)
    fn = jax.jit(lambda p, x: generate.generate(
        graphdef, p, x, valid, keys, 0.5, 1.0, options=options, ids=IDS))
    return lambda: fn(params, prompt).drafts

  with sharding.activate(mesh):
    return {
        "jax_prefill": lambda: prefill(params, prompt),
        "jax_generate": generator("off"),
        "jax_reflect": generator("fixed")
    }


def hf_calls(config, prompt, new_tokens):
  """The same shape through transformers (random weights, fp32, KV cache, greedy), or None."""
  model, versions = hf_model(config)
  if model is None:
    return None, {}
  import torch
  model.eval()
  ids = torch.as_tensor(np.asarray(prompt), dtype=torch.long)
  mask = torch.ones_like(ids)

  def prefill():
    with torch.no_grad():
      return model(input_ids=ids, attention_mask=mask, use_cache=True).logits

  def generate_all():
    with torch.no_grad():
      return model.generate(input_ids=ids,
                            attention_mask=mask,
                            max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens,
                            do_sample=False,
                            use_cache=True)

  return {"hf_prefill": prefill, "hf_generate": generate_all}, versions


def rates(prefix, times, rows, prompt_len, new_tokens):
  prefill, total = times[f"{prefix}_prefill"], times[f"{prefix}_generate"]
  return {
      "prefill_s": prefill,
      "generate_s": total,
      "prefill_tokens_per_s": rows * prompt_len / prefill,
      "decode_tokens_per_s": rows * new_tokens / (total - prefill),
      "end_to_end_tokens_per_s": rows * new_tokens / total
  }


def main(argv):
  del argv
  config = config_lib.resolve_mesh(config_lib.load(_CONFIG.value), jax.device_count())
  config = dataclasses.replace(config, reflect=dataclasses.replace(config.reflect, enabled=True))
  rows, prompt_len, new = _BATCH.value, _PROMPT_LEN.value, _NEW_TOKENS.value
  prompt = np.random.RandomState(0).randint(6, config.model.vocab_size, (rows, prompt_len))
  prompt = prompt.astype(np.int32)
  calls = jax_calls(config, prompt, new, _ITERATIONS.value)
  hf, versions = hf_calls(config, prompt, new)
  calls.update(hf or {})
  times = interleaved_call_medians(calls, _ROUNDS.value)
  result = {"benchmark": "decode", "jax": rates("jax", times, rows, prompt_len, new)}
  reflect_tokens = rows * new * (_ITERATIONS.value + 1)
  result["jax"]["reflect_loop_s"] = times["jax_reflect"]
  result["jax"]["reflect_loop_tokens_per_s"] = reflect_tokens / times["jax_reflect"]
  result["jax"]["reflect_loop_over_draft"] = times["jax_reflect"] / times["jax_generate"]
  if hf:
    result["hf"] = rates("hf", times, rows, prompt_len, new)
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "end_to_end_tokens_per_s"):
      result[f"ratio_{key}"] = result["jax"][key] / result["hf"][key]
  result.update({
      "shape": {
          "batch": rows,
          "prompt_len": prompt_len,
          "new_tokens": new,
          "iterations": _ITERATIONS.value,
          "d_model": config.model.d_model,
          "layers": config.model.num_layers,
          "vocab": config.model.vocab_size
      },
      "versions": {
          "jax": jax.__version__,
          "python": platform.python_version(),
          **versions
      },
      "device": jax.devices()[0].device_kind
  })
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
