"""Model unit tests: causal masking, GQA, rotary invariants, remat, dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import make_config
from rasr_jax.model import layers
from rasr_jax.training import train_state

RNG = np.random.RandomState(0)


@pytest.fixture(scope="module")
def model_cfg():
  return make_config().model


def _model(model_cfg, seed=0):
  config = make_config(**{"reflect.enabled": False})
  return train_state.build_model(dataclasses.replace(config, model=model_cfg), seed)


def _attention(cfg, seed):
  with nnx.use_eager_sharding(False):
    return layers.Attention(cfg, rngs=nnx.Rngs(seed))


def test_causal_masking(model_cfg):
  model = _model(model_cfg)
  tokens = RNG.randint(0, model_cfg.vocab_size, (2, 12))
  changed = tokens.copy()
  changed[:, 7] = (changed[:, 7] + 1) % model_cfg.vocab_size
  a, _ = model(jnp.asarray(tokens))
  b, _ = model(jnp.asarray(changed))
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert not np.allclose(a[:, 7:], b[:, 7:])


def _reference_attention(x, wq, wk, wv, wo, frequencies):
  """Plain multi-head attention in numpy-like jnp, rotary included."""
  t = x.shape[1]
  pos = jnp.broadcast_to(jnp.arange(t), x.shape[:2])
  q = layers.rotary(jnp.einsum("btd,dnh->btnh", x, wq), pos, frequencies)
  k = layers.rotary(jnp.einsum("btd,dnh->btnh", x, wk), pos, frequencies)
  v = jnp.einsum("btd,dnh->btnh", x, wv)
  scores = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
  out = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(scores, axis=-1), v)
  return jnp.einsum("btnh,nhd->btd", out, wo)


def test_mha_matches_reference(model_cfg):
  cfg = dataclasses.replace(model_cfg, num_kv_heads=model_cfg.num_heads)
  attn = _attention(cfg, 1)
  x = jnp.asarray(RNG.randn(2, 10, cfg.d_model), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
  got = attn(x, pos, None)
  want = _reference_attention(x, attn.wq[...], attn.wk[...], attn.wv[...], attn.wo[...],
                              layers.rope_frequencies(cfg))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads(model_cfg):
  gqa = _attention(model_cfg, 2)
  group = model_cfg.num_heads // model_cfg.num_kv_heads
  assert group > 1
  mha = _attention(dataclasses.replace(model_cfg, num_kv_heads=model_cfg.num_heads), 3)
  mha.wq[...] = gqa.wq[...]
  mha.wo[...] = gqa.wo[...]
  mha.wk[...] = jnp.repeat(gqa.wk[...], group, axis=1)  # query head n reads kv head n // G
  mha.wv[...] = jnp.repeat(gqa.wv[...], group, axis=1)
  x = jnp.asarray(RNG.randn(2, 9, model_cfg.d_model), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
  np.testing.assert_allclose(gqa(x, pos, None), mha(x, pos, None), rtol=1e-5, atol=1e-6)


def test_rotary_preserves_norm_and_depends_on_relative_position():
  q = jnp.asarray(RNG.randn(1, 1, 1, 16), jnp.float32)
  k = jnp.asarray(RNG.randn(1, 1, 1, 16), jnp.float32)

  def rot(x, p):
    return layers.rotary(x, jnp.full((1, 1), p), 10000.0)

  np.testing.assert_allclose(rot(q, 0), q, rtol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(rot(q, 37)), jnp.linalg.norm(q), rtol=1e-5)
  dot = lambda a, b: float(jnp.sum(a * b))
  np.testing.assert_allclose(dot(rot(q, 5), rot(k, 2)), dot(rot(q, 103), rot(k, 100)), rtol=1e-4)
  assert abs(dot(rot(q, 5), rot(k, 2)) - dot(rot(q, 9), rot(k, 2))) > 1e-4


def test_returns_logits_and_hidden(model_cfg):
  model = _model(model_cfg)
  logits, hidden = model(jnp.zeros((2, 5), jnp.int32))
  assert logits.shape == (2, 5, model_cfg.vocab_size) and logits.dtype == jnp.float32
  assert hidden.shape == (2, 5, model_cfg.d_model)
  np.testing.assert_allclose(logits, hidden @ model.lm_head[...], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_gradients(model_cfg, policy):
  tokens = jnp.asarray(RNG.randint(0, model_cfg.vocab_size, (2, 8)))

  def grads(cfg):
    graphdef, params = nnx.split(_model(cfg), nnx.Param)
    loss = lambda p: nnx.merge(graphdef, p)(tokens)[0].std()
    return jax.grad(loss)(params)

  plain, remat = grads(model_cfg), grads(dataclasses.replace(model_cfg, remat_policy=policy))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("unroll", [2, 3])  # every block, and more than there are
def test_unrolled_layers_give_the_same_loss_and_gradients(model_cfg, unroll):
  assert model_cfg.num_layers == 2 and model_cfg.scan_unroll == 1
  tokens = jnp.asarray(RNG.randint(0, model_cfg.vocab_size, (2, 8)))

  def value_and_grads(cfg):
    graphdef, params = nnx.split(_model(cfg), nnx.Param)
    loss = lambda p: nnx.merge(graphdef, p)(tokens)[0].std()
    return jax.value_and_grad(loss)(params)

  scanned = value_and_grads(model_cfg)
  unrolled_cfg = dataclasses.replace(model_cfg, scan_unroll=unroll)
  graphdef, params = nnx.split(_model(unrolled_cfg), nnx.Param)
  jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(tokens)[0])(params).jaxpr
  assert [e.params["unroll"] for e in jaxpr.eqns if e.primitive.name == "scan"] == [unroll]
  unrolled = value_and_grads(unrolled_cfg)
  for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(unrolled)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_keeps_float32_params(model_cfg):
  cfg = dataclasses.replace(model_cfg, dtype="bfloat16")
  model = _model(cfg)
  tokens = jnp.asarray(RNG.randint(0, cfg.vocab_size, (2, 8)))
  low, hidden = model(tokens)
  high, _ = _model(model_cfg)(tokens)
  assert hidden.dtype == jnp.bfloat16 and model.embed[...].dtype == jnp.float32
  np.testing.assert_allclose(low, high, atol=5e-3)  # bfloat16 rounding, not a wrong dtype path
  assert np.array_equal(np.argmax(low, -1), np.argmax(high, -1))


def test_cached_forward_equals_full_forward(model_cfg):
  """Prefill then token-by-token through the KV cache gives the full forward's logits."""
  model = _model(model_cfg)
  tokens = jnp.asarray(RNG.randint(0, model_cfg.vocab_size, (2, 11)))
  want, _ = model(tokens)
  cache = model.init_cache(2, 16)
  hidden, cache = model.cached_hidden_states(model.embed_tokens(tokens[:, :6]), cache)
  got = [model.logits(hidden)]
  for t in range(6, 11):
    hidden, cache = model.cached_hidden_states(model.embed_tokens(tokens[:, t:t + 1]), cache)
    got.append(model.logits(hidden))
  assert int(cache.length) == 11
  np.testing.assert_allclose(jnp.concatenate(got, axis=1), want, rtol=1e-5, atol=1e-5)


def test_weight_decay_takes_the_weights_and_leaves_norms_biases_and_mixing_logits():
  """AdamW's decay mask over every parameter of a RASR model with a committee and hierarchical
  critics: exactly the norm scales, the heads' biases and the mixing logits are left out."""
  from rasr_jax import config as config_lib
  from rasr_jax.training import optim
  config = config_lib.resolve_mesh(
      make_config(**{
          "reflect.critics.agents": 2,
          "reflect.critics.hierarchy": True
      }), 1)
  _, abstract, _ = train_state.abstract_state(config)
  mask = optim._decay_mask(abstract.params)
  left_out = {
      "/".join(str(k.key)
               for k in path)
      for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]
      if not decayed
  }
  assert left_out == {
      "blocks/attn_norm/scale", "blocks/mlp_norm/scale", "final_norm/scale", "controller/b_out",
      "critic/consensus_logits", "critic/scale_logits", "critic/score_b", "critic/sentence_b",
      "critic/token_b", "critic/weight_b"
  }
