"""Packed rows: documents laid end to end in rows of T + 1 tokens, and what their segment ids
and loss mask mean to the model.

With document masking (`data.document_masking`), a token attends only to earlier tokens of its
own document, positions restart at 0 where a document starts, and no target is predicted across
a document boundary; a row then gives each token the same logits as its document run alone.
A loss mask (post-training) keeps only some targets: the responses of packed examples.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rasr_jax.model.attention import Mask


@struct.dataclass
class PackedRows:
  """A batch of packed rows."""
  tokens: jax.Array  # [B, T + 1] int32
  # [B, T + 1] int32: which document of the row each token is from (1, 2, ... in row order; a
  # document cut by the row's end continues as segment 1 of the next row); None = no masking.
  segment_ids: jax.Array | None = None
  # [B, T + 1] bool: the tokens the loss predicts (post-training: the responses); None = all.
  loss_mask: jax.Array | None = None


def whole_rows(tokens, document_masking):
  """Rows that are each one document (synthetic batches: benchmarks, compile checks)."""
  return PackedRows(tokens, np.ones(tokens.shape, np.int32) if document_masking else None)


def _target_weights(rows: PackedRows):
  """[B, T] float32: 1 for a target in the same document as its input (every target without
  document masking) that the loss mask keeps, else 0."""
  segments = rows.segment_ids
  if segments is None:
    weights = jnp.ones((rows.tokens.shape[0], rows.tokens.shape[1] - 1), jnp.float32)
  else:
    weights = (segments[:, :-1] == segments[:, 1:]).astype(jnp.float32)
  if rows.loss_mask is not None:
    weights = weights * rows.loss_mask[:, 1:]
  return weights


def inputs_and_targets(rows: PackedRows):
  """-> inputs [B, T], targets [B, T], weights [B, T] float32 (0 for a target in another
  document than its input), positions [B, T] or None, attention Mask or None (None: plain
  causal attention over the whole row)."""
  inputs, targets, weights = rows.tokens[:, :-1], rows.tokens[:, 1:], _target_weights(rows)
  if rows.segment_ids is None:
    return inputs, targets, weights, None, None
  segments = rows.segment_ids[:, :-1]
  index = jnp.arange(segments.shape[1])
  starts = jnp.concatenate(
      [jnp.ones_like(segments[:, :1], bool), segments[:, 1:] != segments[:, :-1]], axis=1)
  first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)  # [B, T] where each document starts
  return inputs, targets, weights, index - first, Mask(segment_ids=segments)


def target_count(rows: PackedRows):
  """The number of targets the LM loss counts ([] float32): B T without document masking."""
  return jnp.sum(_target_weights(rows))
