"""RMSNorm, rotary positions, SwiGLU and grouped-query attention with logical axis names."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rasr_jax import sharding
from rasr_jax.model import attention


def param(rngs, init, shape, names, dtype):
  """A parameter initialised by `init` and annotated with logical axis `names`."""
  return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape, jnp.dtype(dtype)))


def project(x, w, contract=1):
  """x [..., *w.shape[:contract]] times w -> [..., *w.shape[contract:]], as one 2-D matmul:
  XLA's CPU compiler runs the gradient of a 2-D dot about twice as fast as that of the same
  product written as an einsum over [B, T, ...] (docs/performance.md)."""
  inner = math.prod(w.shape[:contract])
  out = x.reshape(-1, inner) @ w.reshape(inner, -1)
  return out.reshape(*x.shape[:x.ndim - contract], *w.shape[contract:])


def constrain(x, names):
  """Sharding constraint by logical names; a no-op outside a mesh with rules. A name without a
  rule in sharding.LOGICAL_RULES raises (flax would replicate it silently)."""
  for name in names:
    if name is not None:
      sharding.mesh_axes(name)
  return nn.with_logical_constraint(x, names)


class RMSNorm(nnx.Module):
  """Root-mean-square norm computed in float32, with a learned per-channel scale."""

  def __init__(self, dim, *, eps, param_dtype, rngs):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), ("norm",), param_dtype)

  def __call__(self, x):  # [..., D] -> [..., D]
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope_frequencies(cfg):
  """Angular frequency of each rotated pair i < H/2 for ModelConfig `cfg` -> float64 [H/2].

  default: theta^(-2i/H). linear: default / factor. llama3: default for wavelengths shorter
  than original_max_positions / high_freq_factor, default / factor for wavelengths longer than
  original_max_positions / low_freq_factor, and a smooth blend of the two in between.
  """
  half = cfg.head_dim // 2
  freq = cfg.rope_theta**(-np.arange(half, dtype=np.float64) / half)
  if cfg.rope_type == "linear":
    return freq / cfg.rope_factor
  if cfg.rope_type == "llama3":
    wavelength = 2 * np.pi / freq
    # 1 where the wavelength is short (kept), 0 where long (divided by factor), linear between.
    keep = (cfg.rope_original_max_positions / wavelength
            - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    keep = np.clip(keep, 0.0, 1.0)
    return keep * freq + (1.0 - keep) * freq / cfg.rope_factor
  return freq


def rotary(x, positions, frequencies):
  """Rotates pairs (i, i + H/2) of x [B, T, N, H] by angle position * frequencies[i] ([H/2])."""
  half = x.shape[-1] // 2
  freq = jnp.asarray(frequencies, jnp.float32)  # [H/2]
  angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, H/2]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]  # [B, T, 1, H/2]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query attention by `model.attention_impl` (attention.py; over a KV cache:
  attention.attend_cached)."""

  def __init__(self, cfg, *, rngs):
    init, pd = nnx.initializers.normal(cfg.init_std), cfg.param_dtype
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.wq = param(rngs, init, (d, n, h), ("embed", "heads", "head_dim"), pd)
    self.wk = param(rngs, init, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
    self.wv = param(rngs, init, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
    self.wo = param(rngs, init, (n, h, d), ("heads", "head_dim", "embed"), pd)
    if cfg.attention_bias:  # added before the rotation, as Qwen2 does
      zeros = nnx.initializers.zeros
      self.q_bias = param(rngs, zeros, (n, h), ("heads", "head_dim"), pd)
      self.k_bias = param(rngs, zeros, (k, h), ("kv_heads", "head_dim"), pd)
      self.v_bias = param(rngs, zeros, (k, h), ("kv_heads", "head_dim"), pd)
    self.cfg = cfg

  def _project(self, x, positions):
    """x [B, T, D] -> rotated q [B, T, N, H], rotated k [B, T, K, H], v [B, T, K, H]."""
    dt = x.dtype
    q, k, v = (project(x, w[...].astype(dt)) for w in (self.wq, self.wk, self.wv))
    if self.cfg.attention_bias:
      q, k, v = (
          a + b[...].astype(dt) for a, b in ((q, self.q_bias), (k, self.k_bias), (v, self.v_bias)))
    freq = rope_frequencies(self.cfg)
    return rotary(q, positions, freq), rotary(k, positions, freq), v

  def _output(self, out):  # [B, T, N, H] -> [B, T, D]
    out = constrain(out, ("act_batch", "act_length", "act_heads", None))
    return project(out, self.wo[...].astype(out.dtype), contract=2)

  def __call__(self, x, positions, mask):
    """x [B, T, D], positions [B, T], mask an attention.Mask or None (causal) -> [B, T, D]."""
    q, k, v = self._project(x, positions)
    return self._output(attention.attend(self.cfg.attention_impl, q, k, v, mask))

  def cached(self, x, positions, mask, cache_k, cache_v, index):
    """Attention of x [B, T, D] over a KV cache [B, K, S, H] after writing x's keys and values
    at cache slots index .. index + T - 1; mask [B, 1, T, S]. -> (out, cache_k, cache_v).

    The cache keeps heads before slots, the layout the attention dots read without a copy.
    """
    q, k, v = self._project(x, positions)
    cache_k, cache_v = (jax.lax.dynamic_update_slice_in_dim(cache,
                                                            new.swapaxes(1, 2).astype(cache.dtype),
                                                            index,
                                                            axis=2)
                        for cache, new in ((cache_k, k), (cache_v, v)))
    keys, values = (cache.swapaxes(1, 2).astype(q.dtype) for cache in (cache_k, cache_v))
    # keys [B, S, K, H]
    out = attention.attend_cached(self.cfg.attention_impl, q, keys, values, mask)
    return self._output(out), cache_k, cache_v


class SwiGLU(nnx.Module):
  """down(silu(x gate) * (x up))."""

  def __init__(self, cfg, *, rngs):
    init, pd = nnx.initializers.normal(cfg.init_std), cfg.param_dtype
    self.w_gate = param(rngs, init, (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), pd)
    self.w_up = param(rngs, init, (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), pd)
    self.w_down = param(rngs, init, (cfg.mlp_dim, cfg.d_model), ("mlp", "embed"), pd)

  def __call__(self, x):  # [B, T, D] -> [B, T, D]
    dt = x.dtype
    gate, up = (project(x, w[...].astype(dt)) for w in (self.w_gate, self.w_up))
    hidden = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
    return project(hidden, self.w_down[...].astype(dt))


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(x))."""

  def __init__(self, cfg, *, rngs):
    kw = dict(eps=cfg.norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
    self.attn_norm = RMSNorm(cfg.d_model, **kw)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, **kw)
    self.mlp = SwiGLU(cfg, rngs=rngs)

  def __call__(self, x, positions, mask):  # [B, T, D] -> [B, T, D]
    x = x + self.attn(self.attn_norm(x), positions, mask)
    return self._mlp_residual(x)

  def cached(self, x, positions, mask, cache_k, cache_v, index):
    """The block over a KV cache (see Attention.cached) -> (x, cache_k, cache_v)."""
    out, cache_k, cache_v = self.attn.cached(self.attn_norm(x), positions, mask, cache_k, cache_v,
                                             index)
    return self._mlp_residual(x + out), cache_k, cache_v

  def _mlp_residual(self, x):
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ("act_batch", "act_length", "act_embed"))
