"""Hierarchical critics (UFARSAP eq. 2 with three scales): token, sentence and document scores
combined with learned weights, the sentence head's target, and the coordination term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rasr_jax.model import heads
from rasr_jax.training import losses

D, C = 2, 3


def _hierarchical_critic():
  with nnx.use_eager_sharding(False):
    return heads.Critic(D, C, hierarchy=True, init_std=0.5, param_dtype="float32", rngs=nnx.Rngs(0))


def test_the_three_scales_and_their_combination_on_a_hand_made_draft():
  """Token scale: 1 - the mean error of the draft's tokens; sentence scale: the mean of the
  sentence head on each sentence's mean hidden state; document scale: c; combined with the
  softmax of the scale logits (equal at init)."""
  base = heads.one_critic(jnp.zeros((1, D)), jnp.zeros((1, D)), jnp.asarray([[0.5, 0.7, 0.9]]),
                          jnp.asarray([[0.2, 0.4, 0.6, 0.9]]), jnp.asarray([[0.2, 0.3, 0.5]]))
  hy = jnp.asarray([[[1.0, 5.0], [3.0, 5.0], [-2.0, 5.0], [9.0, 9.0]]])
  sentences = jnp.asarray([[0, 0, 1, -1]])  # the last token is padding
  out = heads._scales(base, jnp.asarray([1.0, 0.0]), jnp.float32(0.0), jnp.zeros((3,)), hy,
                      jnp.asarray([[True, True, True, False]]), sentences)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  document = 0.2 * 0.5 + 0.3 * 0.7 + 0.5 * 0.9
  want = [1 - 0.4, (sigmoid(2.0) + sigmoid(-2.0)) / 2, document]
  np.testing.assert_allclose(out.scale_scores[0], want, rtol=1e-6)
  np.testing.assert_allclose(out.sentence_scores[0, :2], [sigmoid(2.0), sigmoid(-2.0)], rtol=1e-6)
  assert out.sentence_valid[0].tolist() == [True, True, False, False]
  assert float(out.critique[0]) == pytest.approx(np.mean(want), rel=1e-6)


def test_a_sentence_is_right_when_none_of_its_labelled_tokens_is_wrong():
  critique = heads.one_critic(jnp.zeros((1, D)), jnp.zeros((1, D)), jnp.full((1, C), 0.5),
                              jnp.full((1, 4), 0.5), jnp.full((1, C), 1 / C))
  critique = critique.replace(sentence_scores=jnp.asarray([[0.3, 0.8, 0.5, 0.5]]),
                              sentence_valid=jnp.asarray([[True, True, True, False]]),
                              sentence_index=jnp.asarray([[0, 0, 1, 2]]),
                              scale_scores=jnp.full((1, 3), 0.5),
                              scale_weights=jnp.full((3,), 1 / 3))
  labels = jnp.asarray([[0.0, 1.0, 0.0, 1.0]])  # token 1 (sentence 0) is wrong
  label_mask = jnp.asarray([[True, True, True, False]])  # sentence 2 has no labelled token
  terms = losses._hierarchy_terms(critique, jnp.full((1, C), 0.5), labels, label_mask)
  want = (-np.log(1 - 0.3) - np.log(0.8)) / 2  # sentence 0 wrong, sentence 1 right
  assert float(terms["critic/loss_sentences"]) == pytest.approx(want, rel=1e-5)


def test_coordination_moves_the_weights_to_the_scale_that_matches_true_quality():
  """The coordination term trains the scale weights only: on rows where the sentence scale is
  exact and the others are not, its weight rises from 1/3 to above 0.8."""
  rng = np.random.RandomState(0)
  quality = jnp.asarray(rng.uniform(size=(64, C)), jnp.float32)
  weights = jnp.full((64, C), 1 / C)
  target = jnp.sum(weights * quality, axis=-1)
  scales = jnp.stack([jnp.asarray(rng.uniform(size=64)), target,
                      jnp.asarray(rng.uniform(size=64))], -1)
  base = heads.one_critic(jnp.zeros((64, D)), jnp.zeros((64, D)), quality, jnp.zeros((64, 4)),
                          weights)

  def loss(logits):
    critique = base.replace(sentence_scores=jnp.zeros((64, 4)),
                            sentence_valid=jnp.zeros((64, 4), bool),
                            sentence_index=jnp.zeros((64, 4), jnp.int32),
                            scale_scores=scales,
                            scale_weights=jax.nn.softmax(logits))
    return losses._hierarchy_terms(critique, quality, jnp.zeros((64, 4)), jnp.zeros(
        (64, 4), bool))["critic/loss_coordination"]

  logits = jnp.zeros((3,))
  for _ in range(300):
    logits = logits - 5.0 * jax.grad(loss)(logits)
  assert float(jax.nn.softmax(logits)[1]) > 0.8


def test_hierarchy_adds_only_its_own_parameters():
  params = nnx.state(_hierarchical_critic(), nnx.Param)
  shapes = {name: tuple(value[...].shape) for name, value in params.items()}
  assert shapes["sentence_w"] == (D,) and shapes["sentence_b"] == () and shapes["scale_logits"] == (
      3,)
  assert set(shapes) - {"sentence_w", "sentence_b", "scale_logits"} == {
      "score_w", "score_b", "token_u", "token_b", "weight_w", "weight_b"
  }
  with pytest.raises(ValueError, match="sentence index"):
    _hierarchical_critic()(jnp.zeros((1, 2, D)), jnp.zeros((1, 3, D)), 0.5)
