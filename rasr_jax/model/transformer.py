"""embed -> scanned blocks -> final norm -> LM head; returns logits and final hidden states."""

import jax
import jax.numpy as jnp
from flax import nnx

from rasr_jax.model import layers

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


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
    return self.apply_embeddings(self.embed_tokens(tokens), positions=positions, mask=mask)

  def apply_embeddings(self, x, *, positions=None, mask=None):
    """x [B, T, D] input embeddings -> (logits [B, T, V] float32, hidden [B, T, D])."""
    hidden = self.hidden_states(x, positions=positions, mask=mask)
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
