"""RASR heads: the critic (phi), the controller (xi), and the feedback embeddings (psi).

Shapes follow the package legend (B counts reflection rows).
"""

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rasr_jax.model import layers

NUM_PROGRESS_FEATURES = 4


def progress_features(progress):
  """Sinusoidal features of training progress in [0, 1] -> [NUM_PROGRESS_FEATURES]."""
  angles = jnp.pi * progress * jnp.asarray([0.5, 1.0, 2.0, 4.0])
  return jnp.concatenate([jnp.sin(angles[:2]), jnp.cos(angles[2:])])


@flax.struct.dataclass
class Critique:
  embed_x: jax.Array  # [B, D] mean hidden state over the prompt
  embed_y: jax.Array  # [B, D] mean hidden state over the draft
  scores: jax.Array  # [B, C] C_d, eq. 4
  token_errors: jax.Array  # [B, Y] e_t: probability that draft token t is wrong
  weights: jax.Array  # [B, C] w, eq. 11
  critique: jax.Array  # [B] c = sum_d w_d C_d, eq. 13


def _zeros_init(key, shape, dtype):
  del key
  return jnp.zeros(shape, dtype)


def _masked_mean(hidden, mask):
  """Mean of hidden [B, T, D] over T, over the positions where mask [B, T] is set (or all)."""
  if mask is None:
    return jnp.mean(hidden, axis=1)
  weights = mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class Critic(nnx.Module):
  """phi: dimension scores, per-token errors and adaptive weights from the trunk's hidden states."""

  def __init__(self, d_model, num_dims, *, init_std, param_dtype, rngs):
    init = nnx.initializers.normal(init_std)
    pd = param_dtype
    self.score_w = layers.param(rngs, init, (2 * d_model, num_dims), (None, None), pd)
    self.score_b = layers.param(rngs, _zeros_init, (num_dims,), (None,), pd)
    self.token_u = layers.param(rngs, init, (d_model,), (None,), pd)
    self.token_b = layers.param(rngs, _zeros_init, (), (), pd)
    self.weight_w = layers.param(rngs, init, (d_model + NUM_PROGRESS_FEATURES, num_dims),
                                 (None, None), pd)
    self.weight_b = layers.param(rngs, _zeros_init, (num_dims,), (None,), pd)

  def __call__(self, hidden_x, hidden_y, progress, x_mask=None, y_mask=None):
    """hidden_x [B, P, D], hidden_y [B, Y, D], progress [] in [0, 1] -> Critique.

    x_mask [B, P], y_mask [B, Y] bool (default all) leave padding out of the mean embeddings.
    """
    hx, hy = hidden_x.astype(jnp.float32), hidden_y.astype(jnp.float32)
    embed_x, embed_y = _masked_mean(hx, x_mask), _masked_mean(hy, y_mask)  # [B, D]
    both = jnp.concatenate([embed_x, embed_y], axis=-1)  # [B, 2D]
    scores = jax.nn.sigmoid(both @ self.score_w[...] + self.score_b[...])  # [B, C]
    token_errors = jax.nn.sigmoid(hy @ self.token_u[...] + self.token_b[...])  # [B, Y]
    features = jnp.broadcast_to(progress_features(progress), (hx.shape[0], NUM_PROGRESS_FEATURES))
    weight_in = jnp.concatenate([embed_x, features], axis=-1)  # [B, D + NUM_PROGRESS_FEATURES]
    weights = jax.nn.softmax(weight_in @ self.weight_w[...] + self.weight_b[...], axis=-1)
    return Critique(embed_x=embed_x,
                    embed_y=embed_y,
                    scores=scores,
                    token_errors=token_errors,
                    weights=weights,
                    critique=jnp.sum(weights * scores, axis=-1))


class Controller(nnx.Module):
  """xi: R_xi(embed(x), embed(y), C, c, k) in (0, 1), the will to stop after critique k."""

  def __init__(self, d_model, num_dims, max_iterations, hidden, *, init_std, param_dtype, rngs):
    init = nnx.initializers.normal(init_std)
    pd = param_dtype
    self.w_in = layers.param(rngs, init, (2 * d_model + num_dims + 1, hidden), (None, None), pd)
    self.iteration_embed = layers.param(rngs, init, (max(max_iterations, 1), hidden), (None, None),
                                        pd)
    self.w_out = layers.param(rngs, init, (hidden,), (None,), pd)
    self.b_out = layers.param(rngs, _zeros_init, (), (), pd)

  def __call__(self, critique: Critique, iteration):
    """-> stop probability [B]; `iteration` is the index k of the critiqued draft."""
    features = jnp.concatenate(
        [critique.embed_x, critique.embed_y, critique.scores, critique.critique[:, None]], axis=-1)
    hidden = jax.nn.gelu(features @ self.w_in[...] + self.iteration_embed[...][iteration])
    return jax.nn.sigmoid(hidden @ self.w_out[...] + self.b_out[...])


class Feedback(nnx.Module):
  """psi's embeddings of critic outputs: per-token flags and the C + 1 critique soft tokens."""

  def __init__(self, d_model, num_dims, *, init_std, param_dtype, rngs):
    init = nnx.initializers.normal(init_std)
    pd = param_dtype
    self.flag = layers.param(rngs, init, (d_model,), ("embed",), pd)
    self.critique_proj = layers.param(rngs, init, (num_dims + 1, d_model), (None, "embed"), pd)
    self.critique_type = layers.param(rngs, init, (num_dims + 1, d_model), (None, "embed"), pd)

  def flags(self, token_errors):
    """E_flag(e_t): [B, Y] -> [B, Y, D], added to the draft tokens' embeddings."""
    return token_errors[..., None] * self.flag[...]

  def critique_tokens(self, critique: Critique):
    """W_c [C_1..C_C, c] + E_type: -> [B, C + 1, D]."""
    values = jnp.concatenate([critique.scores, critique.critique[:, None]], axis=-1)  # [B, C+1]
    return values[..., None] * self.critique_proj[...] + self.critique_type[...]
