"""Attention implementations: blockwise, dense and splash (Pallas, interpret mode on CPU) equal
XLA's in values and gradients (causal, padding, segment and aligned masks, grouped-query heads,
lengths that are not a multiple of the block), splash under a mesh equals splash on one device,
`auto` picks per backend, and a model trains alike with each."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import losses, make_config, run_python
from rasr_jax import config as config_lib
from rasr_jax.model import attention
from rasr_jax.reflection import steps

B, T, N, K, H = 2, 20, 4, 2, 8
RNG = np.random.RandomState(0)


def _qkv(batch=B):
  q = jnp.asarray(RNG.normal(size=(batch, T, N, H)), jnp.float32)
  k = jnp.asarray(RNG.normal(size=(batch, T, K, H)), jnp.float32)
  v = jnp.asarray(RNG.normal(size=(batch, T, K, H)), jnp.float32)
  return q, k, v


def _masks():
  start = np.asarray([0, 7])  # row 1 is left-padded: its first 7 positions are padding
  valid = jnp.asarray(np.arange(T)[None] >= start[:, None])
  padding = steps.padded_attention(valid)[1]
  segments = np.where(np.arange(T) < 9, 1, 2)[None].repeat(B, 0)  # two packed documents
  # padding, and two queries that may not see some earlier keys (as the aligned refine pass)
  aligned = padding.replace(hidden=((12, 9, 11), (15, 3, 14)))
  return {
      "causal": None,
      "padding": padding,
      "segment": attention.Mask(segment_ids=jnp.asarray(segments, jnp.int32)),
      "aligned": aligned,
  }


# blockwise in 3 blocks of 8, the last padded; dense whole and in query blocks of 8, 8 and 4;
# splash in one block of 128, padded
IMPLS = {
    "blockwise":
        lambda q, k, v, mask: attention.blockwise(
            q, k, v, None if mask is None else mask.dense(T), block=8),
    "dense":
        lambda q, k, v, mask: attention.dense(q, k, v, None if mask is None else mask.dense(T)),
    "dense_blocks":
        lambda q, k, v, mask: attention.dense(
            q, k, v, None if mask is None else mask.dense(T), block=8),
    "splash":
        attention.splash,
}


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("name", ["causal", "padding", "segment", "aligned"])
def test_implementation_equals_xla_values_and_gradients(impl, name):
  mask = _masks()[name]
  q, k, v = _qkv()
  weights = jnp.asarray(RNG.normal(size=(B, T, N, H)), jnp.float32)

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v) * weights)

  xla = functools.partial(attention.attend, "xla", mask=mask)
  other = functools.partial(IMPLS[impl], mask=mask)
  np.testing.assert_allclose(np.asarray(other(q, k, v)),
                             np.asarray(xla(q, k, v)),
                             atol=1e-5,
                             rtol=1e-5)
  want = jax.grad(functools.partial(loss, xla), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(functools.partial(loss, other), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN runs on NVIDIA GPUs only")
@pytest.mark.parametrize("name", ["causal", "padding", "segment", "aligned"])
def test_cudnn_equals_xla_on_a_gpu(name):
  """cuDNN's flash attention takes 16-bit inputs only: compared with XLA's on the same bfloat16
  inputs, within a few bfloat16 roundings (its 8-bit mantissa: 4e-3 relative each)."""
  mask = _masks()[name]
  q, k, v = (a.astype(jnp.bfloat16) for a in _qkv())
  weights = jnp.asarray(RNG.normal(size=(B, T, N, H)), jnp.bfloat16)

  def loss(impl, q, k, v):
    return jnp.sum((attention.attend(impl, q, k, v, mask) * weights).astype(jnp.float32))

  for impl_value, xla_value in zip(
      jax.value_and_grad(functools.partial(loss, "cudnn"), argnums=(0, 1, 2))(q, k, v),
      jax.value_and_grad(functools.partial(loss, "xla"), argnums=(0, 1, 2))(q, k, v)):
    for got, want in zip(jax.tree.leaves(impl_value), jax.tree.leaves(xla_value)):
      np.testing.assert_allclose(np.asarray(got, np.float32),
                                 np.asarray(want, np.float32),
                                 atol=5e-2,
                                 rtol=5e-2)


def test_masks_hide_what_they_say():
  """The dense form of each mask: causal, padding sees only itself, documents do not see each
  other, hidden spans are hidden (the reference every implementation is compared with)."""
  masks = _masks()
  padding = np.asarray(masks["padding"].dense(T))[:, 0]
  assert padding[0].sum() == T * (T + 1) // 2  # row 0 has no padding: causal
  assert padding[1, 3].sum() == 1 and padding[1, 3, 3]  # a padding query sees only itself
  assert not padding[1, 10, :7].any() and padding[1, 10, 7:11].all()
  segment = np.asarray(masks["segment"].dense(T))[:, 0]
  assert not segment[:, 9, :9].any() and segment[:, 8, :9].all()
  aligned = np.asarray(masks["aligned"].dense(T))[:, 0]
  assert not aligned[:, 12, 9:11].any() and aligned[1, 12, 11:13].all()
  assert (aligned[:, 13] == padding[:, 13]).all()
  with pytest.raises(ValueError, match=r"\(12, 9, 13\) reaches its own query"):
    attention.Mask(hidden=((12, 9, 13),)).static(T)


def test_splash_under_a_mesh_equals_one_device():
  """Splash per shard (shard_map over the batch and head axes) on 8 fake devices, several mesh
  shapes and a row count that does not divide the batch axes, with and without segment ids:
  values and gradients equal the one-device kernel's."""
  out = run_python("""
import json
import jax, jax.numpy as jnp, numpy as np
from rasr_jax import sharding
from rasr_jax.config import MeshConfig
from rasr_jax.model import attention
rng = np.random.RandomState(0)
found = {}
for rows, shape in ((4, (2, 2, 2)), (8, (1, 4, 2)), (2, (2, 2, 2))):
  q = jnp.asarray(rng.normal(size=(rows, 20, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(rows, 20, 2, 8)), jnp.float32) for _ in range(2))
  segments = attention.Mask(segment_ids=jnp.asarray(rng.randint(0, 2, (rows, 20)), jnp.int32))
  for name, mask in (("segments", segments), ("causal", None)):
    loss = lambda q, k, v: jnp.sum(jnp.sin(attention.splash(q, k, v, mask)))
    want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    mesh = sharding.make_mesh(MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2]))
    with sharding.activate(mesh):
      got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    # the loss relative to its size (a sum of 2560 terms), the gradients absolute
    errors = [float(jnp.abs(got[0] - want[0]) / jnp.abs(want[0]))]
    errors += [float(jnp.max(jnp.abs(a - b))) for a, b in zip(got[1], want[1])]
    found[str((rows, shape, name))] = max(errors)
print(json.dumps(found))
""",
                   devices=8)
  import json
  found = json.loads(out.strip().splitlines()[-1])
  assert len(found) == 6
  for case, error in found.items():
    assert error < 1e-5, (case, error)


def test_auto_picks_by_backend_and_dtype():
  assert attention.resolve("auto", jnp.float32, "cpu") == "dense"
  assert attention.resolve("auto", jnp.bfloat16, "tpu") == "splash"
  assert attention.resolve("auto", jnp.bfloat16, "gpu") == "cudnn"
  assert attention.resolve("auto", jnp.float32, "gpu") == "xla"
  assert attention.resolve("blockwise", jnp.float32, "gpu") == "blockwise"
  assert attention.cudnn_runs(jnp.float16, "gpu") and not attention.cudnn_runs(jnp.bfloat16, "cpu")
  assert config_lib.ATTENTION_IMPLS == attention.IMPLEMENTATIONS


@pytest.mark.parametrize("impl", ["blockwise", "splash", "xla"])
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
