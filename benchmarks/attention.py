"""Attention implementations against XLA's at the bench shape: forward + backward, interleaved
in one process.

  PYTHONPATH=. python benchmarks/attention.py [--config=configs/bench.py] [--rounds=10] \
      [--dtype=bfloat16] [--set=data.seq_len=4096]

Times value_and_grad of sum(attention(q, k, v) * w) with the causal mask (the standard step's)
and with a packed-document segment mask (SFT's), for xla, dense and blockwise, and cudnn where
jax sees a GPU and --dtype is bfloat16 (cuDNN takes 16-bit inputs only), at config's batch,
length and heads; and `dense_whole`, dense without its query blocks (every query over all T
keys), which shows what the blocks save. Prints one JSON object: median seconds per call and
the ratios to xla (below 1: faster than xla).
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from common import interleaved_call_medians, load_config
from rasr_jax.model import attention

_CONFIG = flags.DEFINE_string("config", "configs/bench.py", "Config whose shape is timed.")
_ROUNDS = flags.DEFINE_integer("rounds", 10, "Timed calls of each, interleaved.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "q, k, v and w dtype.")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE config overrides.")

BASELINE = "xla"


def main(argv):
  del argv
  config = load_config(_CONFIG.value, _SET.value)
  dtype = jnp.dtype(_DTYPE.value)
  others = ("dense", "dense_whole", "blockwise")
  if attention.cudnn_runs(dtype, jax.default_backend()):
    others += ("cudnn",)
  m = config.model
  b, t = config.train.batch_size, config.data.seq_len
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.normal(size=(b, t, m.num_heads, m.head_dim)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(b, t, m.num_kv_heads, m.head_dim)), dtype) for _ in range(2))
  w = jnp.asarray(rng.normal(size=q.shape), dtype)
  documents = np.arange(t) * 4 // t  # four packed documents per row
  segment = attention.Mask(segment_ids=jnp.asarray(np.broadcast_to(documents, (b, t)), jnp.int32))
  calls = {}
  for mask_name, mask in (("causal", None), ("segment", segment)):
    for impl in (BASELINE, *others):
      if impl == "dense_whole":
        fn = functools.partial(attention.dense, mask=None if mask is None else mask.dense(t))
      else:
        fn = functools.partial(attention.attend, impl, mask=mask)
      grad = jax.jit(
          jax.value_and_grad(lambda q, k, v, fn=fn: jnp.sum((fn(q, k, v) * w).astype(jnp.float32)),
                             argnums=(0, 1, 2)))
      calls[f"{impl}_{mask_name}"] = functools.partial(grad, q, k, v)
  medians = interleaved_call_medians(calls, _ROUNDS.value)
  print(
      json.dumps(
          {
              "shape": {
                  "batch": b,
                  "length": t,
                  "heads": m.num_heads,
                  "kv_heads": m.num_kv_heads,
                  "head_dim": m.head_dim
              },
              "median_s": medians,
              "over_xla": {
                  f"{impl}_{name}": medians[f"{impl}_{name}"] / medians[f"{BASELINE}_{name}"]
                  for impl in others for name in ("causal", "segment")
              },
              "dtype": _DTYPE.value,
              "block": attention.BLOCK,
              "backend": jax.default_backend()
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
