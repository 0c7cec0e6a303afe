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
  """Keys and values, one [B, K, S, H] array per layer; slots < `length` are written.

  Per-layer arrays (not one stacked array scanned over layers) let a decoding step update each
  layer's cache in place (see `layer_states`).

  `valid` [B, S] marks written slots that may be attended (padding is written but not valid);
  `position` [B] is each row's next rotary position: the count of its valid slots, so padding
  takes no positions.
  """
  k: tuple  # L x [B, K, S, H]
  v: tuple  # L x [B, K, S, H]
  length: jax.Array  # [] int32
  valid: jax.Array  # [B, S] bool
  position: jax.Array  # [B] int32


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

    positions [B, T] default 0..T-1; mask an attention.Mask, default causal.
    """
    x = x.astype(self.cfg.dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    return self.final_norm(self._run_blocks(x, positions, mask))

  def init_cache(self, batch, size):
    """An empty KV cache for `batch` rows and `size` slots, in the compute dtype."""
    c = self.cfg
    shape = (batch, c.num_kv_heads, size, c.head_dim)
    names = ("act_batch", "act_kv_heads", "act_length", None)
    zeros = tuple(layers.constrain(jnp.zeros(shape, c.dtype), names) for _ in range(c.num_layers))
    return KVCache(k=zeros,
                   v=zeros,
                   length=jnp.zeros((), jnp.int32),
                   valid=jnp.zeros((batch, size), bool),
                   position=jnp.zeros((batch,), jnp.int32))

  def layer_states(self):
    """(block graphdef, one parameter state per layer): the stacked blocks as separate arrays.

    Decoding loops take these from outside the loop: slicing a layer out of the stacked arrays
    inside the loop copies its weights at every step (XLA on CPU does not hoist the slices),
    which made decoding 2x slower. The price is one extra copy of the block weights while
    decoding.
    """
    graphdef, state = nnx.split(self.blocks)
    return graphdef, [jax.tree.map(lambda a, i=i: a[i], state) for i in range(self.cfg.num_layers)]

  def cached_hidden_states(self, x, cache, *, valid=None, mask=None, layers=None):
    """x [B, T, D] written at the next T cache slots -> (hidden [B, T, D], updated cache).

    valid [B, T] bool (default all) marks real tokens; padding is never attended and takes no
    rotary position. Each query sees the valid slots up to its own, further restricted by
    `mask` [B or 1, T, S] bool when given. `layers`: `layer_states()`, computed outside a
    decoding loop. Prefill is one call with a prompt, decoding one call per token.
    """
    x = x.astype(self.cfg.dtype)
    b, t = x.shape[:2]
    valid = jnp.ones((b, t), bool) if valid is None else valid
    size = cache.valid.shape[1]
    positions = cache.position[:, None] + jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)  # [B, T]
    slot_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, valid, cache.length, axis=1)
    query_slots = cache.length + jnp.arange(t)  # [T]
    slots = jnp.arange(size)
    causal = slots[None, :] <= query_slots[:, None]  # [T, S]
    attend = (causal[None] & slot_valid[:, None, :]) | (slots == query_slots[:, None])[None]
    if mask is not None:
      attend &= mask
    attend = attend[:, None]  # [B, 1, T, S]

    block_graphdef, states = self.layer_states() if layers is None else layers
    keys, values = [], []
    for layer, state in enumerate(states):  # unrolled: see KVCache
      block = nnx.merge(block_graphdef, state)
      x, k, v = block.cached(x, positions, attend, cache.k[layer], cache.v[layer], cache.length)
      keys.append(k)
      values.append(v)
    return self.final_norm(x), KVCache(k=tuple(keys),
                                       v=tuple(values),
                                       length=cache.length + t,
                                       valid=slot_valid,
                                       position=cache.position + jnp.sum(valid, axis=1))

  def logits(self, hidden):  # [B, T, D] -> [B, T, V] float32
    head = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
    logits = layers.project(hidden, head.astype(hidden.dtype))
    return layers.constrain(logits, ("act_batch", "act_length", "act_vocab")).astype(jnp.float32)

  def _run_blocks(self, x, positions, mask):

    def body(x, block, positions, mask):
      return block(x, positions, mask)

    policy = self.cfg.remat_policy
    # "none", or "auto" where no training step resolved it (a forward pass alone keeps nothing)
    if policy in _REMAT_POLICIES:
      body = nnx.remat(body, policy=_REMAT_POLICIES[policy], prevent_cse=False)
    scan = nnx.scan(body,
                    in_axes=(nnx.Carry, 0, None, None),
                    unroll=self.cfg.scan_unroll,
                    out_axes=nnx.Carry,
                    transform_metadata={nnx.PARTITION_NAME: "layers"})
    return scan(x, self.blocks, positions, mask)
