"""Attention implementations by backend (`model.attention_impl`).

  xla        jax.nn.dot_product_attention's XLA path: full T x T scores (the reference)
  dense      the same scores as einsums over [B, N, T, S], softmax in float32, with a
             hand-written gradient that recomputes the probabilities instead of keeping them;
             an uncached pass runs its queries in blocks of BLOCK, each over the keys up to
             its block's end, so the blocks above the causal diagonal are never computed:
             XLA's CPU compiler runs it faster than xla's (performance.md)
  cudnn      the same call with implementation="cudnn": cuDNN's fused flash attention (GPUs,
             bfloat16 or float16 activations)
  splash     Pallas splash attention (TPUs): a flash kernel that skips the blocks the causal
             mask, the segments and the static spans hide; under a mesh it runs per shard
             (shard_map over the batch and head axes). On other backends it runs in Pallas's
             interpret mode, for tests only.
  blockwise  this module's: queries and keys in blocks of BLOCK with an online softmax; a key
             block that no query of the query block may see (above the causal diagonal, or
             wholly masked) is skipped by a conditional, and each query block is rematerialised
             in the backward pass, so no T x T probabilities are kept as residuals
  auto       dense on CPUs, cudnn on GPUs with 16-bit activations, splash on TPUs, else xla

Shapes: q [B, T, N, H], k and v [B, T, K, H] (N a multiple of K: grouped-query attention), mask
a `Mask` or None (causal) -> [B, T, N, H].
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_masks

from rasr_jax import rounding, sharding

IMPLEMENTATIONS = ("auto", "xla", "dense", "cudnn", "splash", "blockwise")
BLOCK = 128  # queries (and keys) per block of the dense and blockwise paths
SPLASH_BLOCK = 512  # queries and keys per block of the splash kernel (at most; a multiple of 128)
_LANES = 128  # splash's blocks are multiples of the TPU's 128 lanes


@struct.dataclass
class Mask:
  """Which keys each query of an uncached pass sees: the causal ones of its own segment, less
  the static `hidden` spans. Kept as segment ids and spans rather than a [T, T] array because
  that is what a flash kernel (splash) takes; `dense` gives the array for the other paths."""
  # [B, T] int32: a query sees only keys with its own id (the documents of a packed row; each
  # padding token has an id of its own, so it sees only itself); None = one segment per row.
  segment_ids: jax.Array | None = None
  # ((query, lo, hi), ...): keys lo .. hi - 1 are hidden from that query (the aligned refine
  # pass, reflection/layout.py); static, so part of the compiled step.
  hidden: tuple[tuple[int, int, int], ...] = struct.field(pytree_node=False, default=())

  def static(self, length):
    """[length, length] bool numpy: causal, less the hidden spans."""
    visible = np.tril(np.ones((length, length), bool))
    for query, lo, hi in self.hidden:
      if lo <= query < hi:  # every query sees its own key (dense's blocks rely on it)
        raise ValueError(f"hidden span ({query}, {lo}, {hi}) reaches its own query")
      visible[query, lo:hi] = False
    return visible

  def dense(self, length):
    """[B or 1, 1, T, T] bool (True: may attend)."""
    visible = jnp.asarray(self.static(length))[None]
    if self.segment_ids is not None:
      segments = self.segment_ids
      visible = visible & (segments[:, :, None] == segments[:, None, :])
    return visible[:, None]


def cudnn_runs(dtype, backend):
  """Whether cuDNN's flash attention runs on `backend` with inputs of `dtype`: GPUs, 16-bit."""
  return backend == "gpu" and jnp.dtype(dtype).itemsize == 2


def resolve(impl, dtype, backend=None):
  """The implementation `auto` stands for on `backend` (default jax's) with activations of
  `dtype`; any other name is itself."""
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return "dense"
  if backend == "tpu":
    return "splash"
  return "cudnn" if cudnn_runs(dtype, backend) else "xla"


def attend(impl, q, k, v, mask: Mask | None):
  """Attention by `impl` (one of IMPLEMENTATIONS)."""
  impl = resolve(impl, q.dtype)
  if impl == "splash":
    return splash(q, k, v, mask)
  dense_mask = None if mask is None else mask.dense(q.shape[1])
  if impl == "blockwise":
    return blockwise(q, k, v, dense_mask)
  if impl == "dense":
    return dense(q, k, v, dense_mask, block=BLOCK)
  implementation = "cudnn" if impl == "cudnn" else None
  return jax.nn.dot_product_attention(q,
                                      k,
                                      v,
                                      mask=dense_mask,
                                      is_causal=mask is None,
                                      implementation=implementation)


def attend_cached(impl, q, k, v, mask):
  """Attention of T new queries over S cached keys (mask [B, 1, T, S], never None): dense where
  `impl` resolves to it, else the XLA path (flash kernels gain nothing for a few queries)."""
  if resolve(impl, q.dtype) == "dense":
    return dense(q, k, v, mask)
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


def splash(q, k, v, mask: Mask | None):
  """Splash attention (see the module docstring); equals `xla` within float rounding, values and
  gradients (tests/test_attention.py). Under a mesh each device attends its own rows and heads:
  the batch axes split the rows where they divide them, the tensor axis the heads."""
  segments = None if mask is None else mask.segment_ids
  hidden = () if mask is None else mask.hidden
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return _splash_local(q, k, v, segments, kernel=_splash_kernel(q.shape, hidden))
  batch = tuple(a for a in sharding.mesh_axes("act_batch") if a in mesh.axis_names)
  if q.shape[0] % math.prod(mesh.shape[a] for a in batch):
    batch = ()  # rows that do not divide over the batch axes are attended whole on each device
  heads = sharding.mesh_axes("act_heads")  # the kv heads are split over the same axis
  local_heads = q.shape[2] // math.prod(mesh.shape[a] for a in heads)
  # built outside shard_map: its block tables are constants, not values of the manual axes
  local = functools.partial(_splash_local,
                            kernel=_splash_kernel((*q.shape[:2], local_heads), hidden))
  spec = jax.sharding.PartitionSpec(batch or None, None, heads or None, None)
  operands, specs = (q, k, v), (spec, spec, spec)
  if segments is not None:
    operands, specs = (*operands, segments), (*specs, jax.sharding.PartitionSpec(batch or None))
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)(*operands)


def _splash_local(q, k, v, segments=None, *, kernel):
  """Splash attention of one device's q [B, T, N, H], k, v [B, T, K, H], segments [B, T] or None.
  T is padded to a whole number of blocks at the end: causal masking hides the padding from
  every real query."""
  length, dim = q.shape[1], q.shape[3]
  padded = _splash_blocks(length)[1]

  def heads_first(a):  # [B, T, heads, H] -> [B, heads, padded, H]
    return jnp.pad(a, ((0, 0), (0, padded - length), (0, 0), (0, 0))).swapaxes(1, 2)

  q = heads_first(q * jnp.asarray(dim**-0.5, q.dtype))  # the kernel does not scale the scores
  k, v = heads_first(k), heads_first(v)
  if segments is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    segments = jnp.pad(segments, ((0, 0), (0, padded - length)))
    out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash_lib.SegmentIds(s, s)))(
        q, k, v, segments)
  return out.swapaxes(1, 2)[:, :length]


def _splash_blocks(length):
  """(block, padded length) of the splash kernel for `length` positions."""
  block = min(SPLASH_BLOCK, rounding.round_up(length, _LANES))
  return block, rounding.round_up(length, block)


def _splash_kernel(shape, hidden):
  """The splash kernel for queries of `shape` (.., T, N, ..) and the `hidden` spans."""
  block, length = _splash_blocks(shape[1])
  return _cached_splash_kernel(length, shape[2], block, hidden, jax.default_backend() != "tpu")


@functools.lru_cache(maxsize=64)
def _cached_splash_kernel(length, heads, block, hidden, interpret):
  """The splash kernel for `heads` query heads over `length` positions (built once per shape:
  its block tables are computed on the host)."""
  if hidden:
    head_mask = splash_masks.NumpyMask(Mask(hidden=hidden).static(length))
  else:
    head_mask = splash_masks.CausalMask((length, length))
  sizes = splash_lib.BlockSizes(block_q=block,
                                block_kv=block,
                                block_kv_compute=block,
                                block_q_dkv=block,
                                block_kv_dkv=block,
                                block_kv_dkv_compute=block,
                                block_q_dq=block,
                                block_kv_dq=block)
  with jax.ensure_compile_time_eval():  # the block tables are constants, not values of a trace
    return splash_lib.make_splash_mha(splash_masks.MultiHeadMask([head_mask] * heads),
                                      block_sizes=sizes,
                                      head_shards=1,
                                      q_seq_shards=1,
                                      interpret=interpret)


def dense(q, k, v, mask, block=None):
  """Full-score attention as einsums over [B, N, T, S] with a hand-written gradient that
  recomputes the probabilities from the saved log-sum-exp, so no [B, N, T, S] array is kept for
  the backward pass; equals `xla` within float rounding, values and gradients
  (tests/test_attention.py). Query rows that see no key average every value.

  `block`, for an uncached pass (S = T, each query sees no later key and sees its own, as every
  `Mask` does): queries in blocks of `block`, each over the keys up to its block's end, so the
  scores above the diagonal's blocks are never computed (half the work as T grows); the same
  values, since the keys left out are hidden from every query of the block.
  """
  groups = q.shape[2] // k.shape[2]
  if groups > 1:  # each query head reads its group's key and value head
    k, v = (jnp.repeat(a, groups, axis=2) for a in (k, v))
  if mask is None:
    mask = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None]
  if block is None:
    return _dense(q, k, v, mask)
  length, parts = q.shape[1], []
  for start in range(0, length, block):
    end = min(start + block, length)
    parts.append(_dense(q[:, start:end], k[:, :end], v[:, :end], mask[:, :, start:end, :end]))
  return jnp.concatenate(parts, axis=1)


@jax.custom_vjp
def _dense(q, k, v, mask):
  return _dense_forward(q, k, v, mask)[0]


def _scores(q, k, mask):
  """[B, N, T, S] float32 scaled scores, masked ones at float32's minimum."""
  scores = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
  return jnp.where(mask, scores, jnp.finfo(jnp.float32).min)


def _dense_forward(q, k, v, mask):
  scores = _scores(q, k, mask)
  log_total = jax.nn.logsumexp(scores, axis=-1, keepdims=True)  # [B, N, T, 1]
  out = jnp.einsum("bnts,bsnh->btnh", jnp.exp(scores - log_total).astype(v.dtype), v)
  return out, (q, k, v, mask, out, log_total)


def _dense_backward(residuals, d_out):
  q, k, v, mask, out, log_total = residuals
  f32 = lambda a: a.astype(jnp.float32)
  probs = jnp.exp(_scores(q, k, mask) - log_total)
  d_v = jnp.einsum("bnts,btnh->bsnh", probs, f32(d_out))
  d_probs = jnp.einsum("btnh,bsnh->bnts", f32(d_out), f32(v))
  # sum_s probs * d_probs, read from the outputs: sum_h d_out * out
  row = jnp.einsum("btnh,btnh->bnt", f32(d_out), f32(out))[..., None]
  d_scores = probs * (d_probs - row) / jnp.sqrt(jnp.float32(q.shape[-1]))
  d_q = jnp.einsum("bnts,bsnh->btnh", d_scores, f32(k))
  d_k = jnp.einsum("bnts,btnh->bsnh", d_scores, f32(q))
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


_dense.defvjp(_dense_forward, _dense_backward)


def blockwise(q, k, v, mask, block=BLOCK):
  """Flash-style attention in plain JAX (see the module docstring); equals `xla` within float
  rounding, values and gradients (tests/test_attention.py)."""
  batch, length, heads, dim = q.shape
  kv_heads = k.shape[2]
  block = min(block, length)
  padded = rounding.round_up(length, block)  # padding keys are never seen: masked, or past causal
  if padded != length:
    q, k, v = (jnp.pad(a, ((0, 0), (0, padded - length), (0, 0), (0, 0))) for a in (q, k, v))
    if mask is not None:
      mask = jnp.pad(mask, ((0, 0), (0, 0), (0, padded - length), (0, padded - length)))
  blocks = padded // block
  groups = heads // kv_heads
  # [blocks, B, block, K, G, H] queries; [blocks, B, block, K, H] keys and values.
  qb = q.reshape(batch, blocks, block, kv_heads, groups, dim).swapaxes(0, 1)
  kb = k.reshape(batch, blocks, block, kv_heads, dim).swapaxes(0, 1)
  vb = v.reshape(batch, blocks, block, kv_heads, dim).swapaxes(0, 1)
  if mask is None:
    mb = None
  else:  # [q blocks, k blocks, B, block, block]
    mask = jnp.broadcast_to(mask[:, 0], (batch, padded, padded))
    mb = mask.reshape(batch, blocks, block, blocks, block).transpose(1, 3, 0, 2, 4)
  scale = 1.0 / jnp.sqrt(jnp.float32(dim))

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def query_block(i, q_i, mask_i):
    """Output [B, block, K, G, H] of query block i over every key block."""

    def key_block(carry, j):
      top, total, acc = carry  # [B, block, K, G], same, [B, block, K, G, H]
      visible = _visible(i, j, block, None if mask_i is None else mask_i[j])  # [B, bq, bk]

      def update(carry):
        top, total, acc = carry
        scores = jnp.einsum("bqkgh,bskh->bqkgs", q_i, kb[j]).astype(jnp.float32) * scale
        scores = jnp.where(visible[:, :, None, None, :], scores, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(scores, axis=-1))
        safe_top = jnp.where(jnp.isfinite(new_top), new_top, 0.0)
        probs = jnp.exp(scores - safe_top[..., None])
        correction = jnp.exp(jnp.where(jnp.isfinite(top), top - safe_top, -jnp.inf))
        total = total * correction + jnp.sum(probs, axis=-1)
        acc = acc * correction[..., None] + jnp.einsum("bqkgs,bskh->bqkgh", probs, vb[j].astype(
            jnp.float32))
        return new_top, total, acc

      return jax.lax.cond(jnp.any(visible), update, lambda c: c, (top, total, acc)), None

    shape = (batch, block, kv_heads, groups)
    start = (jnp.full(shape, -jnp.inf), jnp.zeros(shape), jnp.zeros(shape + (dim,)))
    (_, total, acc), _ = jax.lax.scan(key_block, start, jnp.arange(blocks))
    return (acc / jnp.maximum(total, 1e-30)[..., None]).astype(q.dtype)

  out = jax.lax.map(lambda args: query_block(*args), (jnp.arange(blocks), qb, mb))
  return out.swapaxes(0, 1).reshape(batch, padded, heads, dim)[:, :length]


def _visible(i, j, block, mask_ij):
  """[B or 1, block, block] bool: which keys of block j the queries of block i may see."""
  if mask_ij is not None:
    return mask_ij
  rows = i * block + jnp.arange(block)[:, None]
  cols = j * block + jnp.arange(block)[None, :]
  return (cols <= rows)[None]
