"""TrueQuality oracles (RASR.md §5): the targets of L_critic and of the controller.

`text_quality` is a jnp function of token ids, used inside the jitted step. `task_quality`
scores a decoded draft of a bundled verifiable task with the task's checker; it runs on the host
(evaluation, generation reports), since the checkers read text.
"""

import jax.numpy as jnp

from rasr_jax import tasks

DIMENSIONS = ("factual", "logic", "relevance")


def text_quality(draft, target):
  """draft, target [B, Y] int -> (quality [B, 3] in DIMENSIONS order, labels [B, Y] float).

  factual: positionwise token accuracy; logic: correct prefix length / Y; relevance: unigram F1
  (equal lengths, so the multiset overlap / Y); labels: 1 where the draft token is wrong.
  """
  y = draft.shape[-1]
  right = draft == target  # [B, Y]
  factual = jnp.mean(right, axis=-1)
  logic = jnp.sum(jnp.cumprod(right, axis=-1), axis=-1) / y
  same_draft = draft[:, :, None] == draft[:, None, :]  # [B, Y, Y]
  # The i-th occurrence of a token in the draft counts if the target has at least i of it.
  rank = jnp.sum(jnp.tril(same_draft), axis=-1)  # [B, Y] occurrences of draft_i in draft_<=i
  in_target = jnp.sum(draft[:, :, None] == target[:, None, :], axis=-1)  # [B, Y]
  relevance = jnp.sum(rank <= in_target, axis=-1) / y
  quality = jnp.stack([factual, logic, relevance], axis=-1).astype(jnp.float32)
  return quality, (~right).astype(jnp.float32)


def select(quality, dim_names):
  """Columns of a [..., 3] quality array for the configured critic dimensions."""
  return quality[..., [DIMENSIONS.index(name) for name in dim_names]]


def task_quality(example, draft_text, draft_ids=(), target_ids=()):
  """Quality of a decoded draft of a bundled task: ({dimension: value}, per-token labels).

  factual: the final answer is right; logic: the fraction of the draft's checkable steps
  (`a op b = c`) that are right (no steps: 1 if the answer is right, else 0); relevance: the
  fraction of the question's quantities the draft uses; labels: [draft_t != target_t] over token
  ids, positionwise (a missing position counts as wrong).
  """
  result = tasks.check(example, draft_text)
  logic = (result.steps_right / result.steps_total if result.steps_total else float(result.correct))
  relevance = (result.quantities_used / result.quantities_total if result.quantities_total else 1.0)
  labels = [float(i >= len(target_ids) or d != target_ids[i]) for i, d in enumerate(draft_ids)]
  return {"factual": float(result.correct), "logic": logic, "relevance": relevance}, labels
