"""Attention implementations: blockwise and dense equal XLA's in values and gradients (causal,
padding and segment masks, grouped-query heads, lengths that are not a multiple of the block),
`auto` picks per backend, and a model trains alike with each."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import losses, make_config
from rasr_jax import config as config_lib
from rasr_jax.model import attention

B, T, N, K, H = 2, 20, 4, 2, 8
RNG = np.random.RandomState(0)


def _qkv():
  q = jnp.asarray(RNG.normal(size=(B, T, N, H)), jnp.float32)
  k = jnp.asarray(RNG.normal(size=(B, T, K, H)), jnp.float32)
  v = jnp.asarray(RNG.normal(size=(B, T, K, H)), jnp.float32)
  return q, k, v


def _masks():
  causal = np.tril(np.ones((T, T), bool))
  start = np.asarray([0, 7])  # row 1 is left-padded: its first 7 positions are padding
  valid = np.arange(T)[None] >= start[:, None]
  padding = causal[None] & valid[:, None, :] & valid[:, :, None]
  segments = np.where(np.arange(T) < 9, 1, 2)[None].repeat(B, 0)  # two packed documents
  segment = causal[None] & (segments[:, :, None] == segments[:, None, :])
  return {"causal": None, "padding": padding[:, None], "segment": segment[:, None]}


# blockwise in 3 blocks of 8, the last padded
IMPLS = {"blockwise": functools.partial(attention.blockwise, block=8), "dense": attention.dense}


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("name", ["causal", "padding", "segment"])
def test_implementation_equals_xla_values_and_gradients(impl, name):
  mask = _masks()[name]
  mask = None if mask is None else jnp.asarray(mask)
  q, k, v = _qkv()
  # Query rows that see no key (padding) are outputs nobody reads; compare the others.
  seen = np.ones((B, T), bool) if mask is None else np.asarray(mask[:, 0].any(-1))
  weights = jnp.asarray(RNG.normal(size=(B, T, N, H)), jnp.float32) * seen[..., None, None]

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v) * weights)

  xla = functools.partial(attention.attend, "xla", mask=mask)
  other = functools.partial(IMPLS[impl], mask=mask)
  np.testing.assert_allclose(np.asarray(other(q, k, v))[seen],
                             np.asarray(xla(q, k, v))[seen],
                             atol=1e-5,
                             rtol=1e-5)
  want = jax.grad(functools.partial(loss, xla), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(functools.partial(loss, other), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5)


def test_auto_picks_by_backend_and_dtype():
  assert attention.resolve("auto", jnp.float32, "cpu") == "dense"
  assert attention.resolve("auto", jnp.bfloat16, "tpu") == "xla"
  assert attention.resolve("auto", jnp.bfloat16, "gpu") == "cudnn"
  assert attention.resolve("auto", jnp.float32, "gpu") == "xla"
  assert attention.resolve("blockwise", jnp.float32, "gpu") == "blockwise"
  assert config_lib.ATTENTION_IMPLS == attention.IMPLEMENTATIONS


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
def test_a_model_trains_alike_with_each_attention(impl, straight_run, tmp_path):
  """The tiny RASR step (trunk, critic and refine passes) with blockwise or XLA attention logs
  the losses of the default run (dense, `auto` on CPU)."""
  from rasr_jax.training import loop
  workdir, config = straight_run
  loop.train(make_config(**{
      "train.steps": config.train.steps,
      "model.attention_impl": impl
  }), str(tmp_path))
  got, want = losses(str(tmp_path)), losses(workdir)
  assert sorted(got) == sorted(want)
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-4), step
