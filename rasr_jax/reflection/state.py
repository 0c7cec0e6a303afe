"""The typed state carried from one draft-critique-refine iteration to the next.

The training `lax.scan` and the generation `lax.while_loop` carry the same `LoopState`; the
steps in `steps.py` read and advance it.
"""

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LoopState:
  """Where the loop stands before iteration `iteration` critiques y(k)."""
  iteration: jax.Array  # [] int32: k, the index of the draft about to be critiqued
  draft: jax.Array  # [B, Y] int32: each row's current draft (a stopped row keeps its last)
  length: jax.Array  # [B] int32: tokens of the draft before padding (Y for full-length drafts)
  active: jax.Array  # [B] bool: the row has not stopped
  refinements: jax.Array  # [B] int32: refinements applied to the row so far


def start(draft, length=None) -> LoopState:
  """The state before the first critique of y(0) [B, Y]; `length` [B] defaults to Y."""
  rows, target_len = draft.shape
  if length is None:
    length = jnp.full((rows,), target_len, jnp.int32)
  return LoopState(iteration=jnp.zeros((), jnp.int32),
                   draft=draft,
                   length=length,
                   active=jnp.ones((rows,), bool),
                   refinements=jnp.zeros((rows,), jnp.int32))
