"""embed -> scanned blocks -> final norm -> LM head; returns logits and final hidden states."""

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rasr_jax.model import layers

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer: k, v [L, B, S, K, H]; positions < `length` are written."""
  k: jax.Array
  v: jax.Array
  length: jax.Array  # [] int32


def cache_mask(query_slots, cache_size, valid_from=None):
  """[B, 1, T, S] mask: a query written at cache slot q [B, T] sees slots s <= q (and s >= the
  row's `valid_from` [B], to skip left padding)."""
  slots = jnp.arange(cache_size)
  mask = slots[None, None, :] <= query_slots[:, :, None]  # [B, T, S]
  if valid_from is not None:
    mask &= slots[None, None, :] >= valid_from[:, None, None]
  return mask[:, None]


class Transformer(nnx.Module):
  """Llama-style decoder whose blocks are stacked on a leading `layers` axis and scanned."""

  def __init__(self, cfg, *, rngs):
    self.cfg = cfg
    init, pd = nnx.initializers.normal(cfg.init_std), cfg.param_dtype
    self.embed = layers.param(rngs, init, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pd)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return layers.Block(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm = layers.RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = layers.param(rngs, init, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pd)

  def embed_tokens(self, tokens):  # [B, T] int -> [B, T, D]
    x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.dtype)
    return layers.constrain(x, ("act_batch", "act_length", "act_embed"))

  def __call__(self, tokens, *, positions=None, mask=None):
    """tokens [B, T] -> (logits [B, T, V] float32, hidden [B, T, D])."""
    hidden = self.hidden_states(self.embed_tokens(tokens), positions=positions, mask=mask)
    return self.logits(hidden), hidden

  def hidden_states(self, x, *, positions=None, mask=None):
    """x [B, T, D] -> final (normed) hidden states [B, T, D], without the LM head.

    positions [B, T] default 0..T-1; mask [B or 1, 1, T, T] bool (True = may attend), default
    causal.
    """
    x = x.astype(self.cfg.dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    return self.final_norm(self._run_blocks(x, positions, mask))

  def init_cache(self, batch, size):
    """An empty KV cache for `batch` rows and `size` positions, in the compute dtype."""
    c = self.cfg
    shape = (c.num_layers, batch, size, c.num_kv_heads, c.head_dim)
    return KVCache(k=jnp.zeros(shape, c.dtype), v=jnp.zeros(shape, c.dtype),
                   length=jnp.zeros((), jnp.int32))

  def cached_hidden_states(self, x, cache, *, positions=None, mask=None):
    """x [B, T, D] appended to `cache` -> (hidden [B, T, D], cache with length + T).

    Default positions continue from cache.length; default mask is causal over the cache.
    Prefill is one call with the prompt, decoding one call per token.
    """
    x = x.astype(self.cfg.dtype)
    b, t = x.shape[:2]
    slots = jnp.broadcast_to(cache.length + jnp.arange(t), (b, t))
    positions = slots if positions is None else positions
    mask = cache_mask(slots, cache.k.shape[2]) if mask is None else mask

    def body(x, block, cache_k, cache_v):
      x, cache_k, cache_v = block.cached(x, positions, mask, cache_k, cache_v, cache.length)
      return x, (cache_k, cache_v)

    scan = nnx.scan(body, in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0),
                    transform_metadata={nnx.PARTITION_NAME: "layers"})
    x, (k, v) = scan(x, self.blocks, cache.k, cache.v)
    return self.final_norm(x), KVCache(k=k, v=v, length=cache.length + t)

  def logits(self, hidden):  # [B, T, D] -> [B, T, V] float32
    head = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
    logits = jnp.einsum("btd,dv->btv", hidden, head.astype(hidden.dtype))
    return layers.constrain(logits, ("act_batch", "act_length", "act_vocab")).astype(jnp.float32)

  def _run_blocks(self, x, positions, mask):
    def body(x, block, positions, mask):
      return block(x, positions, mask)

    policy = self.cfg.remat_policy
    if policy != "none":
      body = nnx.remat(body, policy=_REMAT_POLICIES[policy], prevent_cse=False)
    scan = nnx.scan(body, in_axes=(nnx.Carry, 0, None, None), out_axes=nnx.Carry,
                    transform_metadata={nnx.PARTITION_NAME: "layers"})
    return scan(x, self.blocks, positions, mask)
