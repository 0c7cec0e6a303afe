"""Loss terms as pure functions. Each returns (loss, metrics) or the sums a caller normalises."""

import jax
import jax.numpy as jnp


def token_cross_entropy(logits, targets):
  """logits [B, T, V] float32, targets [B, T] int -> per-token cross-entropy [B, T]."""
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [B, T]
  return log_z - target_logit


def lm_loss_sum(logits, targets, weights):
  """Sum over tokens of weight * cross-entropy (the caller divides by the token count)."""
  return jnp.sum(token_cross_entropy(logits, targets) * weights)
