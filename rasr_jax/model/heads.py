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
  """The critic's output. With a committee of A agents the unprefixed fields are the consensus;
  with one critic (A = 1) they are its own and `agent_*` hold the same values on an A = 1 axis."""
  embed_x: jax.Array  # [B, D] mean hidden state over the prompt
  embed_y: jax.Array  # [B, D] mean hidden state over the draft
  scores: jax.Array  # [B, C] C_d, eq. 4 (the consensus: sum_m a_md C_md)
  token_errors: jax.Array  # [B, Y] e_t: probability that draft token t is wrong (agents' mean)
  weights: jax.Array  # [B, C] w, eq. 11 (agents' mean)
  critique: jax.Array  # [B] c = sum_d w_d C_d, eq. 13
  agent_scores: jax.Array  # [B, A, C] each agent's C_md
  agent_token_errors: jax.Array  # [B, A, Y]
  agent_weights: jax.Array  # [B, A, C]
  agent_critique: jax.Array  # [B, A] each agent's own c_m = sum_d w_md C_md
  consensus: jax.Array  # [A, C] a_md: each agent's share of dimension d (sums to 1 over A)
  disagreement: jax.Array  # [B] variance of C_md over the agents, averaged over d (0 if A = 1)
  # Hierarchical critics (None without): with them `critique` is the combination of the scales.
  sentence_scores: jax.Array | None = None  # [B, E] probability that sentence e is right
  sentence_valid: jax.Array | None = None  # [B, E] bool: sentence e exists
  sentence_index: jax.Array | None = None  # [B, Y] the sentence of each draft token (-1: none)
  scale_scores: jax.Array | None = None  # [B, 3] token, sentence and document scale scores
  scale_weights: jax.Array | None = None  # [3] their learned weights (sum to 1)


def one_critic(embed_x, embed_y, scores, token_errors, weights) -> Critique:
  """The Critique of a single critic (A = 1): scores [B, C], token errors [B, Y], weights [B, C]."""
  critique = jnp.sum(weights * scores, axis=-1)
  return Critique(embed_x=embed_x,
                  embed_y=embed_y,
                  scores=scores,
                  token_errors=token_errors,
                  weights=weights,
                  critique=critique,
                  agent_scores=scores[:, None],
                  agent_token_errors=token_errors[:, None],
                  agent_weights=weights[:, None],
                  agent_critique=critique[:, None],
                  consensus=jnp.ones((1, scores.shape[-1]), jnp.float32),
                  disagreement=jnp.zeros_like(critique))


def _masked_mean(hidden, mask):
  """Mean of hidden [B, T, D] over T, over the positions where mask [B, T] is set (or all)."""
  if mask is None:
    return jnp.mean(hidden, axis=1)
  weights = mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def _agent(score_w, score_b, token_u, token_b, weight_w, weight_b, both, hy, weight_in):
  """One critic agent: both [B, 2D], hy [B, Y, D], weight_in [B, D + 4] -> (scores [B, C],
  token errors [B, Y], weights [B, C])."""
  scores = jax.nn.sigmoid(both @ score_w + score_b)
  token_errors = jax.nn.sigmoid(hy @ token_u + token_b)
  weights = jax.nn.softmax(weight_in @ weight_w + weight_b, axis=-1)
  return scores, token_errors, weights


SCALES = ("token", "sentence", "document")


def _scales(critique: Critique, sentence_w, sentence_b, scale_logits, hy, y_mask, sentences):
  """The hierarchical critique (UFARSAP eq. 2, three scales) of a Critique: token scale 1 - the
  mean per-token error, sentence scale the mean of per-sentence scores (a head on each
  sentence's mean hidden state), document scale c; combined with softmax(scale_logits)."""
  rows, width = sentences.shape
  member = (sentences[..., None] == jnp.arange(width)) & y_mask[..., None]  # [B, Y, E]
  counts = jnp.sum(member, axis=1)  # [B, E]
  pooled = jnp.einsum("bys,byd->bsd", member.astype(hy.dtype), hy) / jnp.maximum(
      counts, 1)[..., None]  # [B, E, D]
  sentence_scores = jax.nn.sigmoid(pooled @ sentence_w + sentence_b)  # [B, E]
  sentence_valid = counts > 0
  mask = y_mask.astype(jnp.float32)
  token = 1.0 - jnp.sum(critique.token_errors * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0)
  sentence = jnp.sum(sentence_scores * sentence_valid, 1) / jnp.maximum(
      jnp.sum(sentence_valid, 1), 1)
  scale_scores = jnp.stack([token, sentence, critique.critique], axis=-1)  # [B, 3]
  scale_weights = jax.nn.softmax(scale_logits.astype(jnp.float32))
  return critique.replace(critique=scale_scores @ scale_weights,
                          sentence_scores=sentence_scores,
                          sentence_valid=sentence_valid,
                          sentence_index=sentences,
                          scale_scores=scale_scores,
                          scale_weights=scale_weights)


class Critic(nnx.Module):
  """phi: dimension scores, per-token errors and adaptive weights from the trunk's hidden states.

  With `agents` A > 1 it is a committee: every parameter gains a leading [A] axis (each agent
  its own initialisation), and learned consensus logits [A, C] weigh the agents per dimension.
  With `hierarchy` a sentence head and scale logits [3] (one set, read after the committee)
  combine the token, sentence and document scales into the critique c.
  """

  def __init__(self, d_model, num_dims, *, agents=1, hierarchy=False, init_std, param_dtype, rngs):
    init = nnx.initializers.normal(init_std)
    pd = param_dtype
    lead = (agents,) if agents > 1 else ()
    axes = (None,) * len(lead)

    def param(initializer, shape):
      return layers.param(rngs, initializer, lead + shape, axes + (None,) * len(shape), pd)

    self.score_w = param(init, (2 * d_model, num_dims))
    self.score_b = param(nnx.initializers.zeros, (num_dims,))
    self.token_u = param(init, (d_model,))
    self.token_b = param(nnx.initializers.zeros, ())
    self.weight_w = param(init, (d_model + NUM_PROGRESS_FEATURES, num_dims))
    self.weight_b = param(nnx.initializers.zeros, (num_dims,))
    if agents > 1:  # zeros: the committee starts as the agents' plain mean
      self.consensus_logits = layers.param(rngs, nnx.initializers.zeros, (agents, num_dims),
                                           (None, None), pd)
    if hierarchy:  # zeros: the scales start equally weighted
      self.sentence_w = layers.param(rngs, init, (d_model,), (None,), pd)
      self.sentence_b = layers.param(rngs, nnx.initializers.zeros, (), (), pd)
      self.scale_logits = layers.param(rngs, nnx.initializers.zeros, (len(SCALES),), (None,), pd)
    self.agents, self.hierarchy = agents, hierarchy

  def __call__(self, hidden_x, hidden_y, progress, x_mask=None, y_mask=None, sentences=None):
    """hidden_x [B, P, D], hidden_y [B, Y, D], progress [] in [0, 1] -> Critique.

    x_mask [B, P], y_mask [B, Y] bool (default all) leave padding out of the mean embeddings;
    sentences [B, Y] int (reflection/spans.py's index, -1 on padding) is what the hierarchy's
    sentence scale pools over.
    """
    critique = self._critique(hidden_x, hidden_y, progress, x_mask, y_mask)
    if not self.hierarchy:
      return critique
    if sentences is None:
      raise ValueError("a hierarchical critic needs the drafts' sentence index (`sentences`)")
    y_mask = jnp.ones(hidden_y.shape[:2], bool) if y_mask is None else y_mask
    return _scales(critique, self.sentence_w[...].astype(jnp.float32),
                   self.sentence_b[...].astype(jnp.float32), self.scale_logits[...],
                   hidden_y.astype(jnp.float32), y_mask, sentences)

  def _critique(self, hidden_x, hidden_y, progress, x_mask, y_mask):
    hx, hy = hidden_x.astype(jnp.float32), hidden_y.astype(jnp.float32)
    embed_x, embed_y = _masked_mean(hx, x_mask), _masked_mean(hy, y_mask)  # [B, D]
    both = jnp.concatenate([embed_x, embed_y], axis=-1)  # [B, 2D]
    features = jnp.broadcast_to(progress_features(progress), (hx.shape[0], NUM_PROGRESS_FEATURES))
    weight_in = jnp.concatenate([embed_x, features], axis=-1)  # [B, D + NUM_PROGRESS_FEATURES]
    params = (self.score_w[...], self.score_b[...], self.token_u[...], self.token_b[...],
              self.weight_w[...], self.weight_b[...])
    if self.agents == 1:
      return one_critic(embed_x, embed_y, *_agent(*params, both, hy, weight_in))
    # One unrolled pass per agent, not a vmap: a vmapped agent axis of the size of a mesh axis
    # was split over it by the partitioner, and XLA's CPU runtime then deadlocked in the step's
    # collectives on a (2, 2, 2) mesh (4 runs in 5 with A = 2; tests/test_qa.py).
    per_agent = [_agent(*(p[a] for p in params), both, hy, weight_in) for a in range(self.agents)]
    agent_scores, agent_token_errors, agent_weights = (
        jnp.stack(outputs, axis=1) for outputs in zip(*per_agent)
    )  # [B, A, C], [B, A, Y], [B, A, C]
    consensus = jax.nn.softmax(self.consensus_logits[...].astype(jnp.float32), axis=0)  # [A, C]
    scores = jnp.sum(consensus * agent_scores, axis=1)  # [B, C]
    weights = jnp.mean(agent_weights, axis=1)
    return Critique(embed_x=embed_x,
                    embed_y=embed_y,
                    scores=scores,
                    token_errors=jnp.mean(agent_token_errors, axis=1),
                    weights=weights,
                    critique=jnp.sum(weights * scores, axis=-1),
                    agent_scores=agent_scores,
                    agent_token_errors=agent_token_errors,
                    agent_weights=agent_weights,
                    agent_critique=jnp.sum(agent_weights * agent_scores, axis=-1),
                    consensus=consensus,
                    disagreement=jnp.mean(jnp.var(agent_scores, axis=1), axis=-1))


class Controller(nnx.Module):
  """xi: R_xi(embed(x), embed(y), C, c, k) in (0, 1), the will to stop after critique k."""

  def __init__(self, d_model, num_dims, max_iterations, hidden, *, init_std, param_dtype, rngs):
    init = nnx.initializers.normal(init_std)
    pd = param_dtype
    self.w_in = layers.param(rngs, init, (2 * d_model + num_dims + 1, hidden), (None, None), pd)
    self.iteration_embed = layers.param(rngs, init, (max(max_iterations, 1), hidden), (None, None),
                                        pd)
    self.w_out = layers.param(rngs, init, (hidden,), (None,), pd)
    self.b_out = layers.param(rngs, nnx.initializers.zeros, (), (), pd)

  def __call__(self, critique: Critique, iteration):
    """-> stop probability [B]; `iteration` is the index k of the critiqued draft."""
    features = jnp.concatenate(
        [critique.embed_x, critique.embed_y, critique.scores, critique.critique[:, None]], axis=-1)
    hidden = jax.nn.gelu(features @ self.w_in[...] + self.iteration_embed[...][iteration])
    return jax.nn.sigmoid(hidden @ self.w_out[...] + self.b_out[...])


class Feedback(nnx.Module):
  """psi's embeddings of critic outputs: per-token flags and the critique soft tokens (C + 1,
  and the committee's disagreement when `committee`)."""

  def __init__(self, d_model, num_dims, *, committee=False, init_std, param_dtype, rngs):
    init = nnx.initializers.normal(init_std)
    pd = param_dtype
    tokens = num_dims + 1 + committee
    self.flag = layers.param(rngs, init, (d_model,), ("embed",), pd)
    self.critique_proj = layers.param(rngs, init, (tokens, d_model), (None, "embed"), pd)
    self.critique_type = layers.param(rngs, init, (tokens, d_model), (None, "embed"), pd)
    self.committee = committee

  def flags(self, token_errors):
    """E_flag(e_t): [B, Y] -> [B, Y, D], added to the draft tokens' embeddings."""
    return token_errors[..., None] * self.flag[...]

  def critique_tokens(self, critique: Critique):
    """W_c [C_1..C_C, c(, disagreement)] + E_type: -> [B, C + 1 (+ 1), D]."""
    values = [critique.scores, critique.critique[:, None]]
    if self.committee:
      values.append(critique.disagreement[:, None])
    values = jnp.concatenate(values, axis=-1)  # [B, C + 1 (+ 1)]
    return values[..., None] * self.critique_proj[...] + self.critique_type[...]
