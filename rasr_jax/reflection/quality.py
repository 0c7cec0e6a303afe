"""TrueQuality oracles (RASR.md §5): the targets of L_critic and of the controller.

`row_quality` is what the jitted step uses: `text_quality` (token overlap) for text windows and
`answer_quality` for question/answer rows (the checkers of `answers.py` and `working.py`), both
jnp functions of token ids. Evaluation checks decoded drafts with the host checkers of
`rasr_jax/tasks` instead.
"""

import jax.numpy as jnp

from rasr_jax import config as config_lib
from rasr_jax.reflection import answers, working
from rasr_jax.reflection.rows import ReflectRows

DIMENSIONS = config_lib.CRITIC_DIMS


def text_quality(draft, length, target):
  """draft [B, Y] int, length [B] (its tokens before `<eos>`: Y for a teacher-forced draft),
  target [B, Y] int -> (quality [B, 3] in DIMENSIONS order, labels [B, Y] float, label mask
  [B, Y]: the draft's tokens).

  factual: positionwise token accuracy over the Y target positions (a position past the draft's
  end is wrong); logic: correct prefix length / Y; relevance: unigram F1 between the draft's
  tokens and the target's; labels: 1 where the draft token is wrong.
  """
  y = draft.shape[-1]
  draft_valid = jnp.arange(y)[None] < length[:, None]  # [B, Y]
  right = (draft == target) & draft_valid
  factual = jnp.mean(right, axis=-1)
  logic = jnp.sum(jnp.cumprod(right, axis=-1), axis=-1) / y
  relevance = 2 * _overlap(draft, draft_valid, target, jnp.ones_like(draft_valid)) / (length + y)
  quality = jnp.stack([factual, logic, relevance], axis=-1).astype(jnp.float32)
  return quality, (~right).astype(jnp.float32), draft_valid


def _overlap(draft, draft_valid, target, target_valid):
  """Multiset overlap [B] of the valid tokens of draft [B, Y] and target [B, Y]: the i-th
  occurrence of a token in the draft counts if the target has at least i of it."""
  same_draft = (draft[:, :, None] == draft[:, None, :]) & draft_valid[:, None, :]  # [B, Y, Y]
  rank = jnp.sum(jnp.tril(same_draft), axis=-1)  # occurrences of draft_i in draft_<=i
  in_target = jnp.sum((draft[:, :, None] == target[:, None, :]) & target_valid[:, None, :], -1)
  return jnp.sum((rank <= in_target) & draft_valid, axis=-1)


def answer_quality(draft, length, rows: ReflectRows, pieces: answers.PieceBytes):
  """Question/answer rows: draft [B, Y], length [B] -> (quality [B, 3], labels [B, Y], label
  mask [B, Y]).

  As `tasks.CheckResult.scores` on the decoded draft: factual = the checker reads the
  reference's answer in it (`answers.correct`); logic = the share of its `a op b = c` steps that
  are right (`working.steps`); relevance = the share of the question's quantities it mentions
  (`working.quantities_used`); with no step (no quantity), logic (relevance) is factual.
  Labels: 1 where a draft token differs from the reference's at its position (draft positions
  only).
  """
  draft_valid = jnp.arange(draft.shape[1])[None] < length[:, None]
  text, count = answers.draft_bytes(draft, length, pieces)
  factual = answers.correct(text, count, rows.checker, rows.reference, rows.reference_len)
  factual = factual.astype(jnp.float32)
  steps, right = working.steps(text)
  logic = jnp.where(steps > 0, right / jnp.maximum(steps, 1), factual)
  used, wanted = working.quantities_used(text, rows.checker, rows.quantity, rows.quantity_len)
  relevance = jnp.where(wanted > 0, used / jnp.maximum(wanted, 1), factual)
  quality = jnp.stack([factual, logic, relevance], axis=-1).astype(jnp.float32)
  return quality, (draft != rows.target).astype(jnp.float32), draft_valid


def row_quality(draft, length, rows: ReflectRows, pieces):
  """Each row's oracle: `answer_quality` for question/answer rows, `text_quality` for text
  windows -> (quality [B, 3], labels [B, Y], label mask [B, Y])."""
  text_q, text_labels, text_mask = text_quality(draft, length, rows.target)
  if pieces is None:  # text windows only
    return text_q, text_labels, text_mask
  qa_q, qa_labels, qa_mask = answer_quality(draft, length, rows, pieces)
  text = (rows.checker == answers.TEXT)[:, None]
  return (jnp.where(text, text_q, qa_q), jnp.where(text, text_labels,
                                                   qa_labels), jnp.where(text, text_mask, qa_mask))


def select(quality, dim_names):
  """Columns of a [..., 3] quality array (DIMENSIONS), or [..., 3 + 4 (+ 1)] with the safety
  qualities appended (config.SAFETY_DIMS, then robustness), for the configured critic
  dimensions."""
  names = DIMENSIONS + config_lib.CRITIC_SAFETY_DIMS
  return quality[..., [names.index(name) for name in dim_names]]
