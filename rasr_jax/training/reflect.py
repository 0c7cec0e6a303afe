"""The R-iteration draft-critique-refine loop of one training step (RASR.md §3-§7).

For each iteration k (one `lax.scan` over `LoopState`): the critic pass over `x <draft> y(k)`
gives the critique; the controller decides whether to stop; the refine pass over
`x <draft> y(k) <critique> c(k) <refine> y*` (teacher-forced on y*) gives loss_k and the next
draft. Stopped rows keep their draft and contribute nothing to later losses.

Gradient routing (§7.5) comes from where gradients are stopped: the critic loss reads the
critic heads applied to stop-gradient hidden states (so it trains phi only), the controller
reads stop-gradient critiques (so its loss trains xi only), and the active mask is a constant.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from rasr_jax.model import sampling
from rasr_jax.reflection import quality, steps
from rasr_jax.reflection import state as loop_state
from rasr_jax.reflection.layout import Layout, SpecialIds
from rasr_jax.training import losses


def stopping_enabled(progress, cfg):
  """Learned stopping acts once `reflect.stop_warmup` of training has passed.

  Before that every row refines R times while the controller learns: early on refining cannot
  help yet, so a controller obeyed from step 0 would stop everything and the refiner would
  never train.
  """
  return cfg.learned_stopping & (progress >= cfg.stop_warmup)


def _critic_terms(draft, y_star, frozen, dim_names):
  """TrueQuality of a draft and L_critic of its critique -> (q_all, q, loss, parts, calibration)."""
  q_all, labels = quality.text_quality(draft, y_star)  # [B, 3], [B, Y]
  q = quality.select(q_all, dim_names)  # [B, C]
  loss, parts = losses.critic_loss(frozen, q, labels)
  return q_all, q, loss, parts, jnp.mean(jnp.abs(frozen.scores - q))


def _weighted(quality_dims, weights):
  return jnp.sum(jax.lax.stop_gradient(weights) * quality_dims, axis=-1)


def iterate(graphdef, params, x, y_star, draft0, *, tau, progress, key, cfg, ids: SpecialIds):
  """The `lax.scan` over R >= 1 iterations -> (final LoopState, per-iteration outputs).

  Outputs are stacked on a leading [R] axis. The model is merged inside the scan body, as nnx
  requires.
  """
  layout = Layout(cfg.prompt_len, cfg.target_len, cfg.num_dims)
  aligned = cfg.draft_mode == "teacher_forced"
  stopping = stopping_enabled(progress, cfg)

  def iteration(state: loop_state.LoopState, _):
    draft, k = state.draft, state.iteration
    model = nnx.merge(graphdef, params)
    x_emb = model.embed_tokens(x)
    live, frozen = steps.critique(model, x_emb, draft, progress, ids)
    q_all, q, critic_loss, critic_parts, calibration = _critic_terms(draft, y_star, frozen,
                                                                     cfg.dim_names)
    stop_prob, stop = steps.decide(model, jax.lax.stop_gradient(frozen), state, tau, stopping)
    state = steps.stop_rows(state, stop)
    logits = steps.refine_logits(model, x_emb, draft, live, y_star, ids, layout, aligned)
    row_loss = losses.reflection_row_losses(logits, y_star)  # [B]
    draft_key = jax.random.fold_in(key, k)
    if aligned:  # y(k+1)_i read y*_<i only
      candidate = sampling.sample(jax.lax.stop_gradient(logits), draft_key,
                                  sampling.SamplingParams(cfg.draft_temperature))
    else:  # free-running after `x <draft> y(k) <critique> c(k) <refine>`, as at inference
      prefix = jnp.concatenate([x_emb, steps.refine_prefix(model, draft, live, ids)], axis=1)
      candidate = steps.decode_after(graphdef, params, prefix, cfg.target_len,
                                     cfg.draft_temperature, draft_key)
    q_next = quality.select(quality.text_quality(candidate, y_star)[0], cfg.dim_names)
    target = losses.controller_targets(_weighted(q, frozen.weights),
                                       _weighted(q_next, frozen.weights), cfg.quality_target,
                                       cfg.min_gain)
    active_f = jax.lax.stop_gradient(state.active.astype(jnp.float32))
    out = dict(
        reflect=jnp.mean(active_f * row_loss),
        critic=critic_loss,
        controller=losses.controller_loss(stop_prob, target),
        stop_rate=jnp.mean(stop.astype(jnp.float32)),
        quality=jnp.mean(q_all),
        calibration=calibration,
        **critic_parts,
        # Per row, for metrics and tests: [B] or [B, Y].
        row_loss=row_loss,
        active=active_f,
        stop_prob=stop_prob,
        draft=draft)
    return steps.accept(state, candidate, state.length), out

  return jax.lax.scan(iteration, loop_state.start(draft0), length=cfg.iterations)


def reflect(graphdef, params, x, y_star, draft0, *, tau, progress, key, cfg, ids: SpecialIds):
  """Runs the R iterations; returns ({"reflect", "critic", "controller"} losses, metrics).

  The model is `nnx.merge(graphdef, params)`; x [B, P], y_star [B, Y], draft0 [B, Y] int;
  tau, progress [] float; cfg: ReflectConfig.
  """
  k_total = cfg.iterations
  if k_total == 0:  # critics only: the critic judges y(0); nothing is refined
    model = nnx.merge(graphdef, params)
    _, frozen = steps.critique(model, model.embed_tokens(x), draft0, progress, ids)
    q_all, _, critic_loss, critic_parts, calibration = _critic_terms(draft0, y_star, frozen,
                                                                     cfg.dim_names)
    zero = jnp.zeros((), jnp.float32)
    metrics = {
        "reflect/mean_iterations": zero,
        "quality/q_k0": jnp.mean(q_all),
        "critic/calibration_error": calibration,
        **critic_parts
    }
    return {"reflect": zero, "critic": critic_loss, "controller": zero}, metrics

  final, out = iterate(graphdef,
                       params,
                       x,
                       y_star,
                       draft0,
                       tau=tau,
                       progress=progress,
                       key=key,
                       cfg=cfg,
                       ids=ids)
  final_quality = jnp.mean(quality.text_quality(final.draft, y_star)[0])
  metrics = {
      "reflect/mean_iterations": jnp.mean(final.refinements.astype(jnp.float32)),
      "critic/calibration_error": jnp.mean(out["calibration"]),
      f"quality/q_k{k_total}": final_quality
  }
  for name in ("critic/loss_scores", "critic/loss_tokens", "critic/loss_scalar"):
    metrics[name] = jnp.mean(out[name])
  for k in range(k_total):
    metrics[f"loss/reflect_k{k}"] = jnp.mean(out["row_loss"][k])
    metrics[f"reflect/stop_rate_k{k}"] = out["stop_rate"][k]
    metrics[f"quality/q_k{k}"] = out["quality"][k]
  terms = {
      "reflect": jnp.sum(out["reflect"]),
      "critic": jnp.mean(out["critic"]),
      "controller": jnp.mean(out["controller"])
  }
  return terms, metrics
