"""The reflection sub-batch: prompts x, targets y* and what the quality oracle needs (RASR.md §2).

Question/answer rows: x = `<eos>` + question, left-padded to P; y* = newline + answer + `<eos>`,
right-padded to Y; the checker reads the reference's answer (`reference`); the question's
quantities (`tasks.quantities`) are what relevance counts. Text-window rows: x and y* are P and
Y tokens of a packed row, every position valid, checker TEXT, no quantities.
"""

import flax.struct
import jax
import jax.numpy as jnp

from rasr_jax import tasks
from rasr_jax.reflection import answers

# Row tasks (ReflectRows.task indexes them): the bundled tasks, then a user's question/answer
# files; text windows have task -1.
QA_TASKS = (*tasks.TASKS, "qa")


@flax.struct.dataclass
class ReflectRows:
  prompt: jax.Array  # [B, P] int32, left-padded
  prompt_valid: jax.Array  # [B, P] bool
  target: jax.Array  # [B, Y] int32 y*, right-padded
  target_valid: jax.Array  # [B, Y] bool
  checker: jax.Array  # [B] int32: answers.CHECKER_IDS, or answers.TEXT
  reference: jax.Array  # [B, N] uint8: the answer the checker reads in the reference
  reference_len: jax.Array  # [B] int32
  task: jax.Array  # [B] int32: index into QA_TASKS, -1 for a text window
  quantity: jax.Array  # [B, tasks.MAX_QUANTITIES, tasks.QUANTITY_BYTES] uint8
  quantity_len: jax.Array  # [B, tasks.MAX_QUANTITIES] int32, 0: none

  @property
  def answer_valid(self):
    """[B, Y] bool: the target's tokens before its final `<eos>` (all of a text window)."""
    count = jnp.sum(self.target_valid, axis=1)
    text = self.checker == answers.TEXT
    answer_len = jnp.where(text, count, count - 1)
    return jnp.arange(self.target.shape[1])[None] < answer_len[:, None]


def text_rows(prompt, target, reference_width):
  """Text-window rows from x [B, P] and y* [B, Y] (all valid, no answer)."""
  rows = prompt.shape[0]
  return ReflectRows(prompt=prompt,
                     prompt_valid=jnp.ones(prompt.shape, bool),
                     target=target,
                     target_valid=jnp.ones(target.shape, bool),
                     checker=jnp.full((rows,), answers.TEXT, jnp.int32),
                     reference=jnp.zeros((rows, reference_width), jnp.uint8),
                     reference_len=jnp.zeros((rows,), jnp.int32),
                     task=jnp.full((rows,), -1, jnp.int32),
                     quantity=jnp.zeros((rows, tasks.MAX_QUANTITIES, tasks.QUANTITY_BYTES),
                                        jnp.uint8),
                     quantity_len=jnp.zeros((rows, tasks.MAX_QUANTITIES), jnp.int32))


def concat(parts):
  """Rows of several ReflectRows, in order."""
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
