"""The K-iteration draft-critique-refine loop of one training step (RASR.md §3-§7).

For each iteration k (one `lax.scan`): a critic pass over `x <draft> y(k)` gives the critique;
the controller decides whether to stop; a refine pass over
`x <draft> y(k) <critique> c(k) <refine> y*` (teacher-forced on y*) gives loss_k and the next
draft. Stopped examples keep their draft and contribute nothing to later losses.

Gradient routing (§7.5) comes from where gradients are stopped: the critic loss reads the
critic heads applied to stop-gradient hidden states (so it trains phi only), the controller
reads stop-gradient critiques (so its loss trains xi only), and the active mask is a constant.

Shapes: R rows, P prompt, Y target/draft length, C critic dims, S refine sequence, V vocab.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rasr_jax import decoding, losses, quality, sampling


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Token ids of the layout markers (from the tokenizer)."""
  draft: int
  critique: int
  refine: int


@dataclasses.dataclass(frozen=True)
class Layout:
  """Positions in the refine sequence `x <draft> y(k) <critique> c(k) <refine> y*[:-1]`."""
  prompt_len: int  # P
  target_len: int  # Y
  num_dims: int  # C; the critique has C + 1 soft tokens

  @property
  def draft_start(self):
    return self.prompt_len + 1

  @property
  def critique_token(self):
    return self.draft_start + self.target_len

  @property
  def refine_token(self):  # the position that predicts y*_0
    return self.critique_token + 1 + self.num_dims + 1

  @property
  def length(self):  # S
    return self.refine_token + self.target_len


def refine_mask(layout: Layout, aligned: bool):
  """[1, 1, S, S] bool attention mask of the refine pass (True = may attend).

  Causal; when `aligned` (teacher_forced drafts), the position predicting y*_i may not see draft
  positions j > i, nor the `<critique>` marker and soft tokens (they pool the whole draft).
  """
  s = layout.length
  mask = np.tril(np.ones((s, s), bool))
  if aligned:
    for i in range(layout.target_len):
      row = layout.refine_token + i
      mask[row, layout.draft_start + i + 1:layout.critique_token] = False
      mask[row, layout.critique_token:layout.refine_token] = False
  return jnp.asarray(mask[None, None])


def marker(model, token_id, rows):
  """Embedding [R, 1, D] of one marker token."""
  return model.embed_tokens(jnp.full((rows, 1), token_id, jnp.int32))


def critique_draft(model, x_emb, draft, progress, ids: SpecialIds):
  """Critic pass over `x <draft> y(k)` -> (live critique, critique of stop-gradient states).

  The live critique feeds the refine pass (L_reflection reaches psi and phi through it); the
  other trains the critic (L_critic reaches phi only).
  """
  p = x_emb.shape[1]
  seq = jnp.concatenate([x_emb, marker(model, ids.draft, draft.shape[0]),
                         model.embed_tokens(draft)], axis=1)  # [R, P + 1 + Y, D]
  hidden = model.hidden_states(seq)
  hx, hy = hidden[:, :p], hidden[:, p + 1:]
  live = model.critic(hx, hy, progress)
  frozen = model.critic(jax.lax.stop_gradient(hx), jax.lax.stop_gradient(hy), progress)
  return live, frozen


def refine_prefix(model, draft, critique, ids: SpecialIds):
  """Embeddings [R, Y + C + 4, D] of `<draft> y(k)+flags <critique> c(k) <refine>`."""
  rows = draft.shape[0]
  dtype = model.cfg.dtype
  flags = model.feedback.flags(critique.token_errors)  # [R, Y, D]
  return jnp.concatenate([
      marker(model, ids.draft, rows),
      model.embed_tokens(draft) + flags.astype(dtype),
      marker(model, ids.critique, rows),
      model.feedback.critique_tokens(critique).astype(dtype),
      marker(model, ids.refine, rows),
  ], axis=1)


def refine_sequence(model, x_emb, draft, critique, y_star, ids: SpecialIds):
  """Embeddings [R, S, D] of `x <draft> y(k)+flags <critique> c(k) <refine> y*[:-1]`."""
  return jnp.concatenate([x_emb, refine_prefix(model, draft, critique, ids),
                          model.embed_tokens(y_star[:, :-1])], axis=1)


def refine_logits(model, x_emb, draft, critique, y_star, ids: SpecialIds, mask):
  """Refine pass, teacher-forced on y* -> logits [R, Y, V] of the positions predicting y*."""
  seq = refine_sequence(model, x_emb, draft, critique, y_star, ids)
  hidden = model.hidden_states(seq, mask=mask)
  return model.logits(hidden[:, -draft.shape[1]:])


def decode(graphdef, params, prefix, steps, temperature, key):
  """Free-running decoding of `steps` tokens after prefix embeddings [R, L, D] -> [R, steps].

  One prefill of the prefix into a KV cache, then one cached trunk call per token. No gradient
  flows through the sampled tokens.
  """
  params, prefix = jax.lax.stop_gradient((params, prefix))
  rows, length, _ = prefix.shape
  model = nnx.merge(graphdef, params)
  hidden, cache = model.cached_hidden_states(prefix, model.init_cache(rows, length + steps))
  decoded = decoding.decode(graphdef, params, cache, model.logits(hidden[:, -1:])[:, 0],
                            jax.random.split(key, rows), steps=steps,
                            sampling_params=sampling.SamplingParams(temperature))
  return decoded.tokens


def stopping_enabled(progress, cfg):
  """Learned stopping acts once `reflect.stop_warmup` of training has passed.

  Before that every example refines K times while the controller learns: early on refining
  cannot help yet, so a controller obeyed from step 0 would stop everything and the refiner
  would never train.
  """
  return cfg.learned_stopping & (progress >= cfg.stop_warmup)


def _critic_terms(draft, y_star, frozen, dim_names):
  """TrueQuality of a draft and L_critic of its critique -> (q_all, q, loss, parts, calibration)."""
  q_all, labels = quality.text_quality(draft, y_star)  # [R, 3], [R, Y]
  q = quality.select(q_all, dim_names)  # [R, C]
  loss, parts = losses.critic_loss(frozen, q, labels)
  return q_all, q, loss, parts, jnp.mean(jnp.abs(frozen.scores - q))


def _weighted(quality_dims, weights):
  return jnp.sum(jax.lax.stop_gradient(weights) * quality_dims, axis=-1)


def iterate(graphdef, params, x, y_star, draft0, *, tau, progress, key, cfg, ids: SpecialIds):
  """The `lax.scan` over K >= 1 iterations -> (final draft [R, Y], per-iteration outputs).

  Outputs are stacked on a leading [K] axis. The model is merged inside the scan body, as nnx
  requires.
  """
  layout = Layout(cfg.prompt_len, cfg.target_len, cfg.num_dims)
  mask = refine_mask(layout, aligned=cfg.draft_mode == "teacher_forced")
  rows = x.shape[0]
  stopping = stopping_enabled(progress, cfg)

  def iteration(carry, k):
    draft, active = carry
    model = nnx.merge(graphdef, params)
    x_emb = model.embed_tokens(x)
    live, frozen = critique_draft(model, x_emb, draft, progress, ids)
    q_all, q, critic_loss, critic_parts, calibration = _critic_terms(draft, y_star, frozen,
                                                                      cfg.dim_names)
    stop_prob = model.controller(jax.lax.stop_gradient(frozen), k)  # [R]
    stop = (stop_prob > tau) & stopping
    active = active & ~stop
    logits = refine_logits(model, x_emb, draft, live, y_star, ids, mask)  # [R, Y, V]
    row_loss = losses.reflection_row_losses(logits, y_star)  # [R]
    draft_key = jax.random.fold_in(key, k)
    if cfg.draft_mode == "teacher_forced":  # aligned: y(k+1)_i read y*_<i only
      candidate = sampling.sample(jax.lax.stop_gradient(logits), draft_key,
                                  sampling.SamplingParams(cfg.draft_temperature))
    else:  # free-running after `x <draft> y(k) <critique> c(k) <refine>`, as at inference
      prefix = jnp.concatenate([x_emb, refine_prefix(model, draft, live, ids)], axis=1)
      candidate = decode(graphdef, params, prefix, cfg.target_len, cfg.draft_temperature,
                         draft_key)
    q_next = quality.select(quality.text_quality(candidate, y_star)[0], cfg.dim_names)
    target = losses.controller_targets(_weighted(q, frozen.weights),
                                       _weighted(q_next, frozen.weights),
                                       cfg.quality_target, cfg.min_gain)
    active_f = jax.lax.stop_gradient(active.astype(jnp.float32))
    out = dict(reflect=jnp.mean(active_f * row_loss), critic=critic_loss,
               controller=losses.controller_loss(stop_prob, target),
               stop_rate=jnp.mean(stop.astype(jnp.float32)), quality=jnp.mean(q_all),
               calibration=calibration, **critic_parts,
               # Per row, for metrics and tests: [R] or [R, Y].
               row_loss=row_loss, active=active_f, stop_prob=stop_prob, draft=draft)
    return (jnp.where(active[:, None], candidate, draft), active), out

  init = (draft0, jnp.ones((rows,), bool))
  (final_draft, _), out = jax.lax.scan(iteration, init, jnp.arange(cfg.iterations))
  return final_draft, out


def reflect(graphdef, params, x, y_star, draft0, *, tau, progress, key, cfg, ids: SpecialIds):
  """Runs the K iterations; returns ({"reflect", "critic", "controller"} losses, metrics).

  The model is `nnx.merge(graphdef, params)`; x [R, P], y_star [R, Y], draft0 [R, Y] int;
  tau, progress [] float; cfg: ReflectConfig.
  """
  k_total = cfg.iterations
  if k_total == 0:  # critics only: the critic judges y(0); nothing is refined
    model = nnx.merge(graphdef, params)
    _, frozen = critique_draft(model, model.embed_tokens(x), draft0, progress, ids)
    q_all, _, critic_loss, critic_parts, calibration = _critic_terms(draft0, y_star, frozen,
                                                                      cfg.dim_names)
    zero = jnp.zeros((), jnp.float32)
    metrics = {"reflect/mean_iterations": zero, "quality/q_k0": jnp.mean(q_all),
               "critic/calibration_error": calibration, **critic_parts}
    return {"reflect": zero, "critic": critic_loss, "controller": zero}, metrics

  final_draft, out = iterate(graphdef, params, x, y_star, draft0, tau=tau, progress=progress,
                             key=key, cfg=cfg, ids=ids)
  final_quality = jnp.mean(quality.text_quality(final_draft, y_star)[0])
  metrics = {"reflect/mean_iterations": jnp.mean(jnp.sum(out["active"], axis=0)),
             "critic/calibration_error": jnp.mean(out["calibration"]),
             f"quality/q_k{k_total}": final_quality}
  for name in ("critic/loss_scores", "critic/loss_tokens", "critic/loss_scalar"):
    metrics[name] = jnp.mean(out[name])
  for k in range(k_total):
    metrics[f"loss/reflect_k{k}"] = jnp.mean(out["row_loss"][k])
    metrics[f"reflect/stop_rate_k{k}"] = out["stop_rate"][k]
    metrics[f"quality/q_k{k}"] = out["quality"][k]
  terms = {"reflect": jnp.sum(out["reflect"]), "critic": jnp.mean(out["critic"]),
           "controller": jnp.mean(out["controller"])}
  return terms, metrics
