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


def binary_cross_entropy(prob, target, eps=1e-6):
  """Elementwise BCE of probabilities `prob` against targets in [0, 1]."""
  prob = jnp.clip(prob, eps, 1.0 - eps)
  return -(target * jnp.log(prob) + (1.0 - target) * jnp.log1p(-prob))


def reflection_row_losses(refine_logits, target, target_valid):
  """Teacher-forced refine logits [B, Y, V] vs y* [B, Y] -> mean cross-entropy per row [B] over
  the valid target positions [B, Y]."""
  weights = target_valid.astype(jnp.float32)
  total = jnp.sum(token_cross_entropy(refine_logits, target) * weights, axis=-1)
  return total / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)


def critic_loss(critique, quality, labels, label_mask, dim_names=()):
  """L_critic (RASR.md §5): score MSE + per-token BCE + (c - sum_d w_d q_d)^2, each averaged,
  and over the agents of a committee; a committee adds the consensus term (sum_m a_md C_md -
  q_d)^2 on stop-gradient agent scores, which trains the consensus weights a only; a
  hierarchical critic adds its sentence and coordination terms (`_hierarchy_terms`).

  critique: heads.Critique; quality [B, C] targets of the configured dims (named `dim_names`:
  each has its score term as `critic/loss_scores/<name>`); labels [B, Y] over the draft
  positions in label_mask [B, Y].
  """
  agents = critique.agent_scores.shape[1]
  per_dim = jnp.mean((critique.agent_scores - quality[:, None])**2, axis=(0, 1))  # [C]
  scores = jnp.mean(per_dim)
  weights = jnp.broadcast_to(
      label_mask.astype(jnp.float32)[:, None], critique.agent_token_errors.shape)  # [B, A, Y]
  tokens = jnp.sum(binary_cross_entropy(critique.agent_token_errors, labels[:, None])
                   * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  scalar = jnp.mean(
      (critique.agent_critique - jnp.sum(critique.agent_weights * quality[:, None], axis=-1))**2)
  parts = {"critic/loss_scores": scores, "critic/loss_tokens": tokens, "critic/loss_scalar": scalar}
  parts.update({f"critic/loss_scores/{name}": per_dim[d] for d, name in enumerate(dim_names)})
  total = scores + tokens + scalar
  if agents > 1:
    consensus = jnp.sum(critique.consensus * jax.lax.stop_gradient(critique.agent_scores), axis=1)
    parts["critic/loss_consensus"] = jnp.mean((consensus - quality)**2)
    total += parts["critic/loss_consensus"]
  if critique.scale_scores is not None:
    parts.update(_hierarchy_terms(critique, quality, labels, label_mask))
    total += parts["critic/loss_sentences"] + parts["critic/loss_coordination"]
  return total, parts


def _hierarchy_terms(critique, quality, labels, label_mask):
  """A hierarchical critic's terms: the sentence head's BCE against each sentence's label (1 when
  none of its labelled tokens is wrong; sentences without a labelled token are left out), and the
  coordination term (sum_s b_s sg(c_s) - sum_d sg(w_d) q_d)^2 (eq. 6 with the scales as the
  orchestrated parts), which trains the scale weights b only."""
  width = critique.sentence_scores.shape[1]
  member = critique.sentence_index[..., None] == jnp.arange(width)  # [B, Y, E]
  labelled = member & label_mask[..., None]
  wrong = jnp.any(labelled & (labels[..., None] > 0.5), axis=1)  # [B, E]
  counted = (jnp.any(labelled, axis=1) & critique.sentence_valid).astype(jnp.float32)
  sentences = jnp.sum(
      binary_cross_entropy(critique.sentence_scores,
                           (~wrong).astype(jnp.float32)) * counted) / jnp.maximum(
                               jnp.sum(counted), 1.0)
  target = jnp.sum(jax.lax.stop_gradient(critique.weights) * quality, axis=-1)  # [B]
  combined = jax.lax.stop_gradient(critique.scale_scores) @ critique.scale_weights
  return {
      "critic/loss_sentences": sentences,
      "critic/loss_coordination": jnp.mean((combined - target)**2)
  }


def controller_targets(weighted_quality, weighted_quality_next, quality_target, min_gain):
  """stop* [B]: y(k) already good enough, or refining it gained too little (RASR.md §6)."""
  done = weighted_quality >= quality_target
  no_gain = weighted_quality_next - weighted_quality <= min_gain
  return (done | no_gain).astype(jnp.float32)


def controller_loss(stop_prob, stop_target):
  """L_controller: mean BCE of R_xi [B] against stop* [B]."""
  return jnp.mean(binary_cross_entropy(stop_prob, stop_target))
