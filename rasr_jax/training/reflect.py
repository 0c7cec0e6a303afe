"""The R-iteration draft-critique-refine loop of one training step (RASR.md §3-§7).

For each iteration k (one `lax.scan` over `LoopState`): the critic pass over `x <draft> y(k)`
gives the critique; the controller decides whether to stop; the refine pass over
`x <draft> y(k) <critique> c(k) <refine> y*` (teacher-forced on y*) gives loss_k and the next
draft. L_reflection sums loss_k over every row, stopped or not (§7.4): stopping decides which
draft a row carries on with, never whether the refiner learns. The controller judges y(k)
before it is refined (§6), and its target asks whether the refinement it could veto helped.

Gradient routing (§7.5) comes from where gradients are stopped: the critic loss reads the
critic heads applied to stop-gradient hidden states (so it trains phi only), the controller
reads stop-gradient critiques (so its loss trains xi only), and drafts are constants.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from rasr_jax import config as config_lib
from rasr_jax.model import heads, sampling
from rasr_jax.model.decoding import Decoded
from rasr_jax.reflection import answers, quality, steps
from rasr_jax.reflection import rows as rows_lib
from rasr_jax.reflection import state as loop_state
from rasr_jax.reflection.layout import Layout, SpecialIds
from rasr_jax.reflection.rows import ReflectRows
from rasr_jax.safety import robustness
from rasr_jax.training import losses


def stopping_enabled(progress, cfg):
  """Learned stopping acts once `reflect.stop_warmup` of training has passed.

  Before that every row refines R times while the controller learns what refining gains.
  """
  return cfg.learned_stopping & (progress >= cfg.stop_warmup)


def _draft_valid(state: loop_state.LoopState):
  return jnp.arange(state.draft.shape[1])[None] < state.length[:, None]  # [B, Y]


def _coordination(parts):
  """The coordination terms inside L_critic (a committee's consensus term, a hierarchy's
  coordination term; 0 without either): the unified loss weighs them apart (step.py)."""
  names = ("critic/loss_consensus", "critic/loss_coordination")
  return sum((parts[name] for name in names if name in parts), jnp.zeros((), jnp.float32))


def _row_quality(draft, length, rows, pieces, safety, robust=None):
  """quality.row_quality, with the safety qualities appended when `safety` (a SafetyQuality) is
  given, then the robustness quality `robust` [B] when given -> (quality [B, 3 (+ 4 (+ 1))],
  labels [B, Y], label mask [B, Y])."""
  q_all, labels, label_mask = quality.row_quality(draft, length, rows, pieces)
  if safety is not None:
    q_all = jnp.concatenate([q_all, safety.labels(draft, length)], axis=-1)
  if robust is not None:
    q_all = jnp.concatenate([q_all, robust[:, None]], axis=-1)
  return q_all, labels, label_mask


def _robustness(model, rows, draft, draft_valid, frozen, progress, ids, marks, safety, key,
                dim_names):
  """The robustness quality of a critique [B] (a label: no gradient), or None without the
  dimension: 0 when perturbing x's question tokens flips one of the critic's other verdicts,
  else 1 (safety_quality.py)."""
  if config_lib.ROBUSTNESS not in dim_names:
    return None
  # x's question tokens: every valid one after the start token (the first valid position)
  before = jnp.pad(rows.prompt_valid[:, :-1], ((0, 0), (1, 0)))
  replaceable = rows.prompt_valid & before
  perturbed = safety.perturb(rows.prompt, replaceable, key)
  _, moved = steps.critique(model, model.embed_tokens(perturbed), rows.prompt_valid, draft,
                            draft_valid, progress, ids, marks)
  others = robustness.judged(dim_names)
  flipped = robustness.flips(frozen.scores[:, others], moved.scores[:, others])
  return jax.lax.stop_gradient(1.0 - flipped.astype(jnp.float32))


def _mean_quality(q_all):
  """Mean TrueQuality over the quality dimensions (the safety ones have metrics of their own)."""
  return jnp.mean(q_all[..., :len(quality.DIMENSIONS)])


def _critic_terms(draft, length, rows, frozen, dim_names, pieces, safety, robust):
  """TrueQuality of a draft and L_critic of its critique -> (q_all, q, loss, parts, calibration)."""
  q_all, labels, label_mask = _row_quality(draft, length, rows, pieces, safety,
                                           robust)  # [B, 3+], [B, Y]
  q = quality.select(q_all, dim_names)  # [B, C]
  loss, parts = losses.critic_loss(frozen, q, labels, label_mask, dim_names=dim_names)
  return q_all, q, loss, parts, jnp.mean(jnp.abs(frozen.scores - q))


def _weighted(quality_dims, weights):
  return jnp.sum(jax.lax.stop_gradient(weights) * quality_dims, axis=-1)


def _answer_rate(q_all, rows):
  """Mean factual quality (the answer is right) over question/answer rows (0 if none)."""
  qa = (rows.checker != answers.TEXT).astype(jnp.float32)
  return jnp.sum(q_all[:, 0] * qa) / jnp.maximum(jnp.sum(qa), 1.0)


def _per_task_accuracy(correct, rows):
  """correct [R + 1, B] (factual quality of y(0) .. y(R)) -> {"acc_k{k}/<task>": accuracy of
  y(k) over the rows of the task, "rows/<task>": their count} for every question/answer task
  (accuracies 0 where a task has no rows; the held-out evaluation weights them by the count)."""
  metrics = {}
  for index, name in enumerate(rows_lib.QA_TASKS):
    mine = (rows.task == index).astype(jnp.float32)
    count = jnp.sum(mine)
    metrics[f"rows/{name}"] = count
    for k in range(correct.shape[0]):
      metrics[f"acc_k{k}/{name}"] = jnp.sum(correct[k] * mine) / jnp.maximum(count, 1.0)
  return metrics


def critic_auroc(scores, correct, qa):
  """scores, correct [N] (the critic's factual score, the answer's correctness), qa [N] bool ->
  (AUROC, pairs): the fraction of (right, wrong) answer pairs among question/answer rows that
  the critic orders right (ties half), and how many pairs there are (AUROC 0.5 when none; the
  held-out evaluation weights each batch's AUROC by its pairs)."""
  right, wrong = qa & (correct > 0.5), qa & (correct <= 0.5)
  above = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
  pair = right[:, None] & wrong[None, :]  # [N, N]
  pairs = jnp.sum(pair)
  concordant = jnp.sum(jnp.where(pair, above, 0.0))
  return jnp.where(pairs > 0, concordant / jnp.maximum(pairs, 1), 0.5), pairs.astype(jnp.float32)


def rows_to_decode(state: loop_state.LoopState, cfg):
  """[B] bool: the rows whose candidate y(k+1) is decoded at iteration k.

  With greedy drafts, a row stopped at an earlier iteration keeps its draft, so its critique,
  refine prefix and greedy candidate are those of the iteration where it stopped: it reuses that
  candidate (bit-identical, without its up to Y sequential decoding steps). Sampled drafts
  (reflect.draft_temperature > 0) draw a fresh candidate for every row.
  """
  if cfg.draft_temperature > 0:
    return jnp.ones_like(state.active)
  return state.active


def iterate(graphdef,
            params,
            rows: ReflectRows,
            draft0,
            length0,
            *,
            tau,
            progress,
            key,
            cfg,
            ids: SpecialIds,
            pieces,
            safety=None,
            marks=None):
  """The `lax.scan` over R >= 1 iterations -> (final LoopState, per-iteration outputs).

  draft0 [B, Y] with lengths length0 [B]. Outputs are stacked on a leading [R] axis. The model
  is merged inside the scan body, as nnx requires.
  """
  layout = Layout(cfg.prompt_len, cfg.target_len, cfg.critique_len)
  aligned = cfg.draft_mode == "teacher_forced"
  stopping = stopping_enabled(progress, cfg)

  def iteration(carry, _):
    state, last = carry  # last: each row's most recent candidate y(k+1)
    draft, k = state.draft, state.iteration
    decode = rows_to_decode(state, cfg)  # of free-running candidates
    draft_valid = _draft_valid(state)
    draft_key = jax.random.fold_in(key, k)
    model = nnx.merge(graphdef, params)
    x_emb = model.embed_tokens(rows.prompt)
    live, frozen = steps.critique(model, x_emb, rows.prompt_valid, draft, draft_valid, progress,
                                  ids, marks)
    robust = _robustness(model, rows, draft, draft_valid, frozen, progress, ids, marks, safety,
                         jax.random.fold_in(draft_key, 1), cfg.dim_names)
    q_all, q, critic_loss, critic_parts, calibration = _critic_terms(draft, state.length, rows,
                                                                     frozen, cfg.dim_names, pieces,
                                                                     safety, robust)
    stop_prob, stop = steps.decide(model, jax.lax.stop_gradient(frozen), state, tau, stopping)
    state = steps.stop_rows(state, stop)
    logits = steps.refine_logits(model, x_emb, rows.prompt_valid, draft, draft_valid, live,
                                 rows.target, ids, layout, aligned)
    row_loss = losses.reflection_row_losses(logits, rows.target, rows.target_valid)  # [B]
    if aligned:  # y(k+1)_i read y*_<i only
      candidate = sampling.sample(jax.lax.stop_gradient(logits), draft_key,
                                  sampling.SamplingParams(cfg.draft_temperature))
      candidate_len = state.length
    else:  # free-running after `x <draft> y(k) <critique> c(k) <refine>`, as at inference
      prefix = jnp.concatenate([x_emb, steps.refine_prefix(model, draft, live, ids)], axis=1)
      prefix_valid = jnp.concatenate([rows.prompt_valid, layout.prefix_valid(draft_valid)], 1)

      # Every row is refined, stopped or not: the controller's target asks what refining gains
      # (a row stopped at an earlier iteration reuses its candidate: rows_to_decode).
      def decoded_now():
        return steps.decode_after(graphdef,
                                  params,
                                  prefix,
                                  prefix_valid,
                                  cfg.target_len,
                                  cfg.draft_temperature,
                                  draft_key,
                                  ids,
                                  done=~decode)

      decoded = jax.lax.cond(jnp.any(decode), decoded_now, lambda: last)
      candidate = jnp.where(decode[:, None], decoded.tokens, last.tokens)
      candidate_len = jnp.where(decode, decoded.lengths, last.lengths)
    # The candidate keeps its critique's robustness: it does not enter the controller's gain.
    q_next_all = _row_quality(candidate, candidate_len, rows, pieces, safety, robust)[0]
    q_next = quality.select(q_next_all, cfg.dim_names)
    target = losses.controller_targets(_weighted(q, frozen.weights),
                                       _weighted(q_next, frozen.weights), cfg.quality_target,
                                       cfg.min_gain)
    right, right_next = q_all[:, 0] > 0.5, q_next_all[:, 0] > 0.5
    qa = rows.checker != answers.TEXT
    qa_rows = jnp.maximum(jnp.sum(qa), 1)
    out = dict(
        reflect=jnp.mean(row_loss),
        critic=critic_loss,
        controller=losses.controller_loss(stop_prob, target),
        stop_rate=jnp.mean(stop.astype(jnp.float32)),
        quality=_mean_quality(q_all),
        answer_rate=_answer_rate(q_all, rows),
        wrong_to_right=jnp.sum(qa & ~right & right_next) / qa_rows,
        right_to_wrong=jnp.sum(qa & right & ~right_next) / qa_rows,
        calibration=calibration,
        **critic_parts,
        # Per row, for metrics and tests: [B] or [B, Y].
        correct=q_all[:, 0],
        row_loss=row_loss,
        active=state.active.astype(jnp.float32),
        stop_prob=stop_prob,
        disagreement=frozen.disagreement,
        draft=draft,
        candidate=candidate)
    if "factual" in cfg.dim_names:  # for the critic's AUROC
      out["factual_score"] = frozen.scores[:, cfg.dim_names.index("factual")]
    if cfg.critics.hierarchy:  # each scale's score, and what the critique c is trained toward
      out["scale_scores"] = frozen.scale_scores
      out["scale_weights"] = frozen.scale_weights
      out["weighted_quality"] = _weighted(q, frozen.weights)
    for name in cfg.safety_dim_names:  # the label and the critic's score of each safety dim
      out[f"safe/{name}"] = quality.select(q_all, (name,))[:, 0]
      out[f"safe_score/{name}"] = frozen.scores[:, cfg.dim_names.index(name)]
    if robust is not None:
      out["robust"] = robust
    return (steps.accept(state, candidate, candidate_len), Decoded(candidate, candidate_len)), out

  unused = Decoded(jnp.zeros_like(draft0), jnp.zeros_like(length0))  # every row decodes at k = 0
  (final, _), out = jax.lax.scan(iteration, (loop_state.start(draft0, length0), unused),
                                 length=cfg.iterations)
  return final, out


def _scale_metrics(out, rows, cfg):
  """A hierarchical critic's scales over every critique: `critic/scale_weight/<scale>` (the
  learned weights), `critic/scale_error/<scale>` (mean |c_s - sum_d w_d q_d|, each scale's
  calibration against what c is trained toward) and, on question/answer rows,
  `critic/scale_auroc/<scale>` (how well the scale's score tells right answers from wrong)."""
  scores = out["scale_scores"].reshape(-1, len(heads.SCALES))  # [R * B, 3]
  target = out["weighted_quality"].reshape(-1)
  weights = jnp.mean(out["scale_weights"], axis=0)
  metrics = {}
  for index, scale in enumerate(heads.SCALES):
    metrics[f"critic/scale_weight/{scale}"] = weights[index]
    metrics[f"critic/scale_error/{scale}"] = jnp.mean(jnp.abs(scores[:, index] - target))
    if cfg.qa_rows:
      qa = jnp.broadcast_to(rows.checker != answers.TEXT, out["correct"].shape).reshape(-1)
      metrics[f"critic/scale_auroc/{scale}"], metrics["critic/auroc_pairs"] = critic_auroc(
          scores[:, index], out["correct"].reshape(-1), qa)
  return metrics


def reflect(graphdef,
            params,
            rows: ReflectRows,
            draft0,
            length0,
            *,
            tau,
            progress,
            key,
            cfg,
            ids: SpecialIds,
            pieces,
            safety=None,
            marks=None):
  """Runs the R iterations; returns ({"reflect", "critic", "controller"} losses, metrics).

  The model is `nnx.merge(graphdef, params)`; rows: the reflection sub-batch; draft0 [B, Y]
  int with lengths length0 [B]; tau, progress [] float; cfg: ReflectConfig; pieces: the
  tokenizer's PieceBytes (None for text windows only); safety: a SafetyQuality (labels of drafts,
  robustness perturbations; None without reflect.safety_dims); marks: the tokenizer's sentence marks
  (reflection/spans.py) for a hierarchical critic.
  """
  k_total = cfg.iterations
  if k_total == 0:  # critics only: the critic judges y(0); nothing is refined
    model = nnx.merge(graphdef, params)
    draft_valid = jnp.arange(draft0.shape[1])[None] < length0[:, None]
    _, frozen = steps.critique(model, model.embed_tokens(rows.prompt), rows.prompt_valid, draft0,
                               draft_valid, progress, ids, marks)
    robust = _robustness(model, rows, draft0, draft_valid, frozen, progress, ids, marks, safety,
                         key, cfg.dim_names)
    q_all, _, critic_loss, critic_parts, calibration = _critic_terms(draft0, length0, rows, frozen,
                                                                     cfg.dim_names, pieces, safety,
                                                                     robust)
    zero = jnp.zeros((), jnp.float32)
    metrics = {
        "reflect/mean_iterations": zero,
        "quality/q_k0": _mean_quality(q_all),
        "reflect/acc_k0": _answer_rate(q_all, rows),
        "critic/calibration_error": calibration,
        **critic_parts
    }
    if cfg.critics.agents > 1:
      metrics["critic/disagreement"] = jnp.mean(frozen.disagreement)
    terms = {
        "reflect": zero,
        "critic": critic_loss,
        "controller": zero,
        "coordination": _coordination(critic_parts)
    }
    return terms, metrics

  final, out = iterate(graphdef,
                       params,
                       rows,
                       draft0,
                       length0,
                       tau=tau,
                       progress=progress,
                       key=key,
                       cfg=cfg,
                       ids=ids,
                       pieces=pieces,
                       safety=safety,
                       marks=marks)
  # The delivered drafts keep the last critique's robustness.
  final_quality = _row_quality(final.draft, final.length, rows, pieces, safety,
                               out["robust"][-1] if "robust" in out else None)[0]
  metrics = {
      "reflect/mean_iterations": jnp.mean(final.refinements.astype(jnp.float32)),
      "critic/calibration_error": jnp.mean(out["calibration"]),
      f"quality/q_k{k_total}": _mean_quality(final_quality),
      "reflect/acc_final": _answer_rate(final_quality, rows),
  }
  for name in out:
    if name.startswith("critic/loss_"):
      metrics[name] = jnp.mean(out[name])
  if cfg.critics.agents > 1:  # the variance of the agents' scores, over every critique
    metrics["critic/disagreement"] = jnp.mean(out["disagreement"])
  if cfg.critics.hierarchy:
    metrics.update(_scale_metrics(out, rows, cfg))
  for name in cfg.safety_dim_names:  # over every critique: how often the label fires, and
    # how well the critic's score tells safe drafts from flagged ones; the rate on y(0) and on
    # the draft the loop delivers (whether refinement removes what the label finds)
    metrics[f"safety/rate_k0/{name}"] = jnp.mean(1.0 - out[f"safe/{name}"][0])
    metrics[f"safety/rate_final/{name}"] = jnp.mean(1.0
                                                    - quality.select(final_quality, (name,))[:, 0])
    safe = out[f"safe/{name}"].reshape(-1)
    metrics[f"safety/rate/{name}"] = jnp.mean(1.0 - safe)
    metrics[f"critic/auroc/{name}"], metrics[f"critic/auroc_pairs/{name}"] = critic_auroc(
        out[f"safe_score/{name}"].reshape(-1), safe, jnp.ones_like(safe, bool))
  if cfg.qa_rows:  # over every draft the critic judged
    qa = jnp.broadcast_to(rows.checker != answers.TEXT, out["correct"].shape).reshape(-1)
    correct = out["correct"].reshape(-1)
    if "factual" in cfg.dim_names:
      metrics["critic/auroc"], metrics["critic/auroc_pairs"] = critic_auroc(
          out["factual_score"].reshape(-1), correct, qa)
    if cfg.critics.agents > 1:  # does the committee agree more on right answers?
      metrics["critic/disagreement_auroc"], metrics["critic/auroc_pairs"] = critic_auroc(
          -out["disagreement"].reshape(-1), correct, qa)
    metrics.update(
        _per_task_accuracy(jnp.concatenate([out["correct"], final_quality[None, :, 0]]), rows))
  for k in range(k_total):
    metrics[f"loss/reflect_k{k}"] = jnp.mean(out["row_loss"][k])
    metrics[f"reflect/stop_rate_k{k}"] = out["stop_rate"][k]
    metrics[f"quality/q_k{k}"] = out["quality"][k]
    metrics[f"reflect/acc_k{k}"] = out["answer_rate"][k]
    metrics[f"reflect/wrong_to_right_k{k}"] = out["wrong_to_right"][k]
    metrics[f"reflect/right_to_wrong_k{k}"] = out["right_to_wrong"][k]
  terms = {
      "reflect": jnp.sum(out["reflect"]),
      "critic": jnp.mean(out["critic"]),
      "controller": jnp.mean(out["controller"]),
      "coordination": jnp.mean(_coordination(out))
  }
  return terms, metrics
