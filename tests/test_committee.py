"""The critic committee (UFARSAP's multi-agent critics): A agents, learned consensus, and their
disagreement as one more soft token of the refine pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import make_config
from rasr_jax import config as config_lib
from rasr_jax.model import heads
from rasr_jax.training import losses

D, C, P, Y, B = 8, 3, 5, 4, 6
RNG = np.random.RandomState(0)


def _critic(agents, seed=0):
  with nnx.use_eager_sharding(False):
    return heads.Critic(D,
                        C,
                        agents=agents,
                        init_std=0.5,
                        param_dtype="float32",
                        rngs=nnx.Rngs(seed))


def _hidden():
  hx = jnp.asarray(RNG.normal(size=(B, P, D)), jnp.float32)
  hy = jnp.asarray(RNG.normal(size=(B, Y, D)), jnp.float32)
  return hx, hy


def _stack(critic, agents):
  """A committee of `agents` copies of one critic's parameters."""
  committee = _critic(agents, seed=1)
  for name in ("score_w", "score_b", "token_u", "token_b", "weight_w", "weight_b"):
    value = getattr(critic, name)[...]
    getattr(committee, name)[...] = jnp.broadcast_to(value, (agents,) + value.shape)
  return committee


def test_one_agent_keeps_the_single_critic_parameters():
  """A = 1 is the single critic: no agent axis, no consensus weights, C + 1 soft tokens."""
  params = nnx.state(_critic(1), nnx.Param)
  shapes = {name: tuple(value[...].shape) for name, value in params.items()}
  assert shapes == {
      "score_w": (2 * D, C),
      "score_b": (C,),
      "token_u": (D,),
      "token_b": (),
      "weight_w": (D + heads.NUM_PROGRESS_FEATURES, C),
      "weight_b": (C,)
  }
  assert make_config(**{"reflect.enabled": True}).reflect.critique_len == C + 1
  committee = make_config(**{"reflect.enabled": True, "reflect.critics.agents": 4})
  assert committee.reflect.critique_len == C + 2
  with nnx.use_eager_sharding(False):
    feedback = heads.Feedback(D,
                              C,
                              committee=True,
                              init_std=0.5,
                              param_dtype="float32",
                              rngs=nnx.Rngs(0))
  critique = _critic(4)(*_hidden(), 0.5)
  assert feedback.critique_tokens(critique).shape == (B, C + 2, D)


def test_a_committee_of_identical_agents_is_the_single_critic():
  """Equal agents: the consensus is their common critique, they never disagree, and each agent
  term of L_critic is the single critic's; the consensus term is then the score MSE."""
  single = _critic(1)
  hx, hy = _hidden()
  mask = jnp.asarray(RNG.rand(B, Y) > 0.3)
  one = single(hx, hy, 0.3, y_mask=mask)
  many = _stack(single, 3)(hx, hy, 0.3, y_mask=mask)
  for field in ("scores", "token_errors", "weights", "critique"):
    np.testing.assert_allclose(getattr(many, field), getattr(one, field), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(many.disagreement, 0.0, atol=1e-12)
  quality = jnp.asarray(RNG.rand(B, C), jnp.float32)
  labels = jnp.asarray(RNG.rand(B, Y) > 0.5, jnp.float32)
  loss_one, parts_one = losses.critic_loss(one, quality, labels, mask)
  loss_many, parts_many = losses.critic_loss(many, quality, labels, mask)
  for name, value in parts_one.items():
    np.testing.assert_allclose(parts_many[name], value, rtol=1e-6)
  np.testing.assert_allclose(parts_many["critic/loss_consensus"],
                             parts_one["critic/loss_scores"],
                             rtol=1e-6)
  np.testing.assert_allclose(loss_many, loss_one + parts_one["critic/loss_scores"], rtol=1e-6)
  assert "critic/loss_consensus" not in parts_one


def test_consensus_weights_train_toward_the_better_agent():
  """TrueQuality equals agent 0's scores; agents 1 and 2 score otherwise. Trained by L_critic,
  the consensus weights move to agent 0 in every dimension (and only they would move: the
  consensus term does not reach the agents)."""
  critic = _critic(3)
  hx, hy = _hidden()
  graphdef, params = nnx.split(critic)
  labels, mask = jnp.zeros((B, Y)), jnp.ones((B, Y), bool)
  quality = jax.lax.stop_gradient(critic(hx, hy, 0.5).agent_scores[:, 0])
  assert float(jnp.min(critic(hx, hy, 0.5).disagreement)) > 0

  def loss(logits, params):
    params = jax.tree.map(lambda x: x, params)
    params["consensus_logits"] = nnx.Param(logits)
    critique = nnx.merge(graphdef, params)(hx, hy, 0.5)
    return losses.critic_loss(critique, quality, labels, mask)

  def consensus_term(agent_w, params):
    params = jax.tree.map(lambda x: x, params)
    params["score_w"] = nnx.Param(agent_w)
    critique = nnx.merge(graphdef, params)(hx, hy, 0.5)
    return losses.critic_loss(critique, quality, labels, mask)[1]["critic/loss_consensus"]

  untouched = jax.grad(consensus_term)(params["score_w"][...], params)
  assert float(jnp.max(jnp.abs(untouched))) == 0
  logits = params["consensus_logits"][...]
  first = float(loss(logits, params)[1]["critic/loss_consensus"])
  step = jax.jit(jax.grad(lambda x: loss(x, params)[0]))
  for _ in range(500):
    logits = logits - 30.0 * step(logits)
  shares = jax.nn.softmax(logits, axis=0)
  assert float(jnp.min(shares[0])) > 0.8, shares
  assert float(loss(logits, params)[1]["critic/loss_consensus"]) < 0.2 * first


def test_fewer_than_one_agent_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match=r"config.reflect.critics.agents=0: must be > 0"):
    make_config(**{"reflect.critics.agents": 0})
