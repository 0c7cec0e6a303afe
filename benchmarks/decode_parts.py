"""Where a decode step's time goes: each part of one greedy decode step timed alone, with the
bytes it must read and the rate it reaches against the memory read rate of this machine.

  PYTHONPATH=. python benchmarks/decode_parts.py [--config=configs/bench.py --batch=8
      --prompt_len=128 --new_tokens=128 --rounds=20 --set=FIELD=VALUE ...]

A decode step of B rows reads every weight matrix once and the KV cache once, for a few rows of
arithmetic each: it is bound by memory, not by FLOPs. Each part runs STEPS times in one call (a
call's fixed cost would otherwise weigh on the short parts); calls are timed in one process,
interleaved (see common.py), from random weights, fp32, over a cache of prompt_len + new_tokens
slots (the size benchmarks/decode.py uses) half filled by the decoded tokens:

  step            one greedy token through the model over the cache and the LM head, in a loop
                  of STEPS that updates the cache in place with the weights sliced outside it,
                  as the decode loop runs (Transformer.cached_hidden_states); per step
  matmuls         the step's projections alone (q, k, v, o, gate, up, down of every layer)
  cache_attention the step's attention alone: one query per row over every cache slot
  lm_head         the LM head alone
  read            a sum over an array of the step's size: the rate memory gives a plain read

Prints one JSON object: median seconds of each part, its bytes, GB/s, its share of the step,
and the step's floor (its bytes at the plain read rate).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from common import interleaved_call_medians, load_config
from rasr_jax.model import attention, layers
from rasr_jax.training import train_state

_CONFIG = flags.DEFINE_string("config", "configs/bench.py", "Config whose shape is timed.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows decoded together.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Generated tokens per row.")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "Timed calls of each, interleaved.")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE config overrides.")

STEPS = 16  # repetitions of each part per timed call (its time is divided by this)


def repeated(part):
  """part(constant, carry) -> carry, run STEPS times in one call: a call's fixed cost (dispatch,
  waking the thread pool) is then a small share of the time divided by STEPS."""

  def loop(constant, carry):
    return jax.lax.fori_loop(0, STEPS, lambda _, c: part(constant, c), carry)

  return loop


def _nbytes(tree):
  return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))


def main(argv):
  del argv
  config = load_config(_CONFIG.value, _SET.value)
  m = config.model
  rows, slots = _BATCH.value, _PROMPT_LEN.value + _NEW_TOKENS.value
  filled = _PROMPT_LEN.value + _NEW_TOKENS.value // 2  # the average decode step's cache
  model = train_state.build_model(config, config.seed)
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.RandomState(0)

  cache = model.init_cache(rows, slots)
  cache = cache.replace(k=tuple(jnp.asarray(rng.normal(size=a.shape), a.dtype) for a in cache.k),
                        v=tuple(jnp.asarray(rng.normal(size=a.shape), a.dtype) for a in cache.v),
                        length=jnp.asarray(filled, jnp.int32),
                        valid=jnp.asarray(np.arange(slots) < filled)[None].repeat(rows, 0),
                        position=jnp.full((rows,), filled, jnp.int32))
  token = jnp.asarray(rng.randint(0, m.vocab_size, (rows, 1)), jnp.int32)
  x = jnp.asarray(rng.normal(size=(rows, 1, m.d_model)), m.dtype)

  block_graphdef, states = model.layer_states()

  @jax.jit
  def steps(params, states, cache, token):
    """STEPS greedy decode steps in a loop that updates the cache in place, as decoding does."""

    def body(_, carry):
      cache, token = carry
      model = nnx.merge(graphdef, params)
      hidden, cache = model.cached_hidden_states(model.embed_tokens(token),
                                                 cache,
                                                 layers=(block_graphdef, states))
      return cache, jnp.argmax(model.logits(hidden), axis=-1).astype(jnp.int32)

    return jax.lax.fori_loop(0, STEPS, body, (cache, token))[1]

  blocks = [nnx.merge(block_graphdef, s) for s in states]
  weights = [(b.attn.wq, b.attn.wk, b.attn.wv, b.attn.wo, b.mlp.w_gate, b.mlp.w_up, b.mlp.w_down)
             for b in blocks]
  weights = jax.tree.map(lambda p: p[...], weights, is_leaf=lambda a: isinstance(a, nnx.Param))

  @jax.jit
  @repeated
  def matmuls(weights, out):
    for wq, wk, wv, wo, gate, up, down in weights:
      q, k, v = (layers.project(out, w) for w in (wq, wk, wv))
      attended = q + jnp.repeat(k + v, m.num_heads // m.num_kv_heads, axis=2)  # [B, 1, N, H]
      out = out + layers.project(attended, wo, contract=2)
      out = out + layers.project(
          jax.nn.silu(layers.project(out, gate)) * layers.project(out, up), down)
    return out

  query = jnp.asarray(rng.normal(size=(rows, 1, m.num_heads, m.head_dim)), m.dtype)
  visible = cache.valid[:, None, None, :]  # [B, 1, 1, S]

  @jax.jit
  @repeated
  def cache_attention(cache, query):
    for cache_k, cache_v in zip(cache.k, cache.v):
      keys, values = (c.swapaxes(1, 2) for c in (cache_k, cache_v))  # [B, S, K, H]
      query = attention.attend_cached(m.attention_impl, query, keys, values, visible)
    return query

  @jax.jit
  @repeated
  def lm_head(params, x):
    logits = nnx.merge(graphdef, params).logits(x)  # [B, 1, V]
    return x + jnp.max(logits, axis=-1, keepdims=True)

  @jax.jit
  @repeated
  def read(flat, total):
    return 0.5 * total + jnp.sum(flat + total)  # depends on the carry: read on every repetition

  weight_bytes = _nbytes(weights)
  cache_bytes = _nbytes((cache.k, cache.v))
  head_bytes = m.vocab_size * m.d_model * jnp.dtype(m.param_dtype).itemsize
  step_bytes = weight_bytes + cache_bytes + head_bytes
  flat = jnp.asarray(rng.normal(size=(step_bytes // 4,)), jnp.float32)
  calls = {
      "step": lambda: steps(params, states, cache, token),
      "matmuls": lambda: matmuls(weights, x),
      "cache_attention": lambda: cache_attention(cache, query),
      "lm_head": lambda: lm_head(params, x),
      "read": lambda: read(flat, jnp.zeros((), jnp.float32)),
  }
  medians = {
      name: median / STEPS
      for name, median in interleaved_call_medians(calls, _ROUNDS.value).items()
  }
  sizes = {
      "step": step_bytes,
      "matmuls": weight_bytes,
      "cache_attention": cache_bytes,
      "lm_head": head_bytes,
      "read": flat.size * 4
  }
  read_rate = sizes["read"] / medians["read"]
  print(
      json.dumps(
          {
              "benchmark": "decode_parts",
              "shape": {
                  "batch": rows,
                  "cache_slots": slots,
                  "filled_slots": filled,
                  "d_model": m.d_model,
                  "layers": m.num_layers,
                  "vocab": m.vocab_size
              },
              "median_s": medians,
              "bytes": sizes,
              "gb_per_s": {
                  name: sizes[name] / medians[name] / 1e9 for name in calls
              },
              "share_of_step": {
                  name: medians[name] / medians["step"]
                  for name in ("matmuls", "cache_attention", "lm_head")
              },
              "step_floor_s": step_bytes / read_rate,
              "step_over_floor": medians["step"] * read_rate / step_bytes,
              "backend": jax.default_backend()
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
