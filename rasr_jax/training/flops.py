"""FLOP counting (per token, per training step with every reflection pass) and the peak FLOP/s
that MFU divides by."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from rasr_jax.reflection.layout import Layout

# Dense bf16 peak FLOP/s per device, by `device_kind` prefix (vendor figures).
_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100 PCIe": 756e12,  # before "NVIDIA H100": the first prefix that matches wins
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def matmul_params(model_cfg) -> int:
  """Parameters that take part in a matmul per token (all but the input embedding table)."""
  m = model_cfg
  attn = m.d_model * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
  mlp = 3 * m.d_model * m.mlp_dim
  return m.num_layers * (attn + mlp) + m.d_model * m.vocab_size


def flops_per_token(model_cfg, seq_len, with_head=True) -> float:
  """Training FLOPs per token: 6 x matmul params + attention scores (forward and backward)."""
  m = model_cfg
  attention = 12 * m.num_layers * m.num_heads * m.head_dim * seq_len
  head = 0 if with_head else m.d_model * m.vocab_size
  return 6 * (matmul_params(m) - head) + attention


def _forward(model_cfg, tokens, context, with_head):
  """Forward-only FLOPs of `tokens` tokens attending to `context` positions (a third of
  training's forward + backward)."""
  return tokens * flops_per_token(model_cfg, context, with_head) / 3


def flops_per_step(config) -> float:
  """Training FLOPs of one step: the standard pass plus, with RASR, every reflection pass.

  Per reflecting row and iteration: a critic pass over P + 1 + Y tokens (no LM head) and a
  refine pass over the refine sequence (LM head on the Y target positions only); both are
  differentiated, so each costs forward + backward. Drafts cost forward passes only:
  free-running drafts a prefill and Y decoded tokens each (y(0) after x, y(k+1) after the
  refine prefix; counted at Y tokens, the most a draft decodes), teacher-forced drafts of
  question/answer rows one standard pass over `x y*` (text windows reuse the standard pass).
  """
  m, r = config.model, config.reflect
  seq = config.data.seq_len
  total = flops_per_token(m, seq) * config.train.batch_size * seq
  if not r.enabled:
    return total
  p, y = r.prompt_len, r.target_len
  layout = Layout(p, y, r.critique_len)
  critic_len, refine_len = layout.critique_token, layout.length  # `x <draft> y`, whole
  passes = critic_len * flops_per_token(m, critic_len, with_head=False)
  if r.iterations:
    passes = r.iterations * (passes + refine_len * flops_per_token(m, refine_len, False)
                             + y * 6 * m.d_model * m.vocab_size)
  if r.draft_mode == "autoregressive":
    prefix = p + layout.prefix_len
    passes += _forward(m, p, p, False) + _forward(m, y, p + y, True)  # y(0)
    passes += r.iterations * (_forward(m, prefix, prefix, False) + _forward(m, y, prefix + y, True))
  total += r.rows * passes
  if r.draft_mode == "teacher_forced":
    total += r.qa_rows * _forward(m, p + y - 1, p + y - 1, True)
  return total


def measure_matmul_peak(size=1024, repeats=10) -> float:
  """Median FLOP/s of a jitted float32 [size, size] matmul on device 0 (the CPU denominator)."""
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / float(np.median(times))


def peak_flops_per_device(configured: float) -> float:
  """The configured peak, else the vendor figure for the device, else a measured matmul."""
  if configured > 0:
    return configured
  kind = jax.devices()[0].device_kind
  for prefix, flops in _PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return flops
  return measure_matmul_peak()
