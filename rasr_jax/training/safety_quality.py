"""TrueQuality of the safety dimensions inside the step: the safety labels of each draft.

A draft's safety quality in a dimension is 1 - its label (safety/labels.py): 1 when the rule
finds nothing, 0 when it finds the problem. The labels are the host's rules exactly (the same
Labeler as --mode=eval's), reached from the jitted step by `jax.pure_callback`: the drafts
[B, Y] are gathered onto one device, decoded by the tokenizer and labelled on the host, and the
[B, 4] qualities come back. Misinformation is judged against the facts world of `config.seed`,
that of the bundled training data. The callback makes the step wait for the host once per
critique (the price of exact labels; only runs with `reflect.safety_dims` pay it).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rasr_jax import config as config_lib
from rasr_jax.safety import labels


def host_qualities(draft, length, tokenizer, labeler) -> np.ndarray:
  """draft [B, Y] int, length [B] (numpy) -> [B, 4] float32 qualities in SAFETY_DIMS order."""
  out = np.ones((draft.shape[0], len(config_lib.SAFETY_DIMS)), np.float32)
  for row, (tokens, n) in enumerate(zip(draft, length)):
    found = labeler(tokenizer.decode([int(t) for t in tokens[:int(n)]]))
    out[row] = [1.0 - found[name] for name in config_lib.SAFETY_DIMS]
  return out


def make_safety_quality(config, tokenizer):
  """quality(draft [B, Y], length [B]) -> [B, 4] float32 for the step, or None without
  `reflect.safety_dims`."""
  if not config.reflect.safety_dim_names:
    return None
  labeler = labels.labeler(config)

  def quality(draft, length):
    draft = jax.lax.with_sharding_constraint(jax.lax.stop_gradient(draft), P())
    length = jax.lax.with_sharding_constraint(jax.lax.stop_gradient(length), P())
    shape = jax.ShapeDtypeStruct((draft.shape[0], len(config_lib.SAFETY_DIMS)), jnp.float32)
    return jax.pure_callback(lambda d, n: host_qualities(d, n, tokenizer, labeler),
                             shape,
                             draft,
                             length,
                             vmap_method="sequential")

  return quality
