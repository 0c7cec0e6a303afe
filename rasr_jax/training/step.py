"""train_step(state, rows, qa) -> (state, metrics): the loss terms summed, one optimizer update.

Standard pretraining is the LM loss alone. With `reflect.enabled` the total is
alpha L_standard + beta L_reflection + gamma L_critic + L_controller, whose single gradient
routes each term to its group exactly as RASR.md §7.5 says (see reflect.py).
The step is a pure function of pytrees; `jit_train_step` compiles it with explicit shardings and
a donated state. Gradient accumulation runs inside the step as a `lax.scan` over micro-batches.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rasr_jax import sharding
from rasr_jax.data import packing
from rasr_jax.data.packing import PackedRows
from rasr_jax.model import sampling
from rasr_jax.reflection import rows as rows_lib
from rasr_jax.reflection import spans, steps
from rasr_jax.reflection.rows import ReflectRows
from rasr_jax.training import losses, optim, reflect, strategy

TAU_RANGE = (0.05, 0.95)


def reflection_windows(tokens, logits, rows, cfg, key):
  """Prompt x [B, P], target y* [B, Y] and, for teacher_forced, draft y(0) [B, Y] (§2-3).

  Rows are spread evenly over the batch; each takes a window at a random offset. A
  teacher-forced y(0)_j is sampled from the standard pass's logits at the position that
  predicts y*_j; in autoregressive mode the draft is None (the caller decodes it from x).
  """
  p, y = cfg.prompt_len, cfg.target_len
  stride = tokens.shape[0] // rows
  row_tokens, row_logits = tokens[::stride][:rows], logits[::stride][:rows]
  offset_key, draft_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (rows,), 0, tokens.shape[1] - (p + y) + 1)
  window = jax.vmap(lambda t, o: jax.lax.dynamic_slice(t, (o,), (p + y,)))(row_tokens, offsets)
  if cfg.draft_mode != "teacher_forced":
    return window[:, :p], window[:, p:], None
  draft_logits = jax.vmap(lambda row, o: jax.lax.dynamic_slice_in_dim(row, o + p - 1, y, axis=0))(
      row_logits, offsets)  # [B, Y, V]
  draft0 = sampling.sample(jax.lax.stop_gradient(draft_logits), draft_key,
                           sampling.SamplingParams(cfg.draft_temperature))
  return window[:, :p], window[:, p:], draft0


def teacher_forced_answer_drafts(model, qa: ReflectRows, cfg, key):
  """y(0) [B, Y] of question/answer rows in teacher_forced mode: y(0)_j sampled from a standard
  pass over `x y*` at the position that predicts y*_j; lengths [B] = the answers' (§3)."""
  tokens = jnp.concatenate([qa.prompt, qa.target[:, :-1]], axis=1)  # [B, P + Y - 1]
  valid = jnp.concatenate([qa.prompt_valid, jnp.ones(qa.target[:, :-1].shape, bool)], axis=1)
  positions, mask = steps.padded_attention(valid)
  logits, _ = model(tokens, positions=positions, mask=mask)
  draft = sampling.sample(jax.lax.stop_gradient(logits[:, cfg.prompt_len - 1:]), key,
                          sampling.SamplingParams(cfg.draft_temperature))
  return draft, jnp.sum(qa.answer_valid, axis=1).astype(jnp.int32)


def reflection_rows(graphdef, params, tokens, logits, qa, cfg, key, ids, micro_batches=1):
  """The reflection sub-batch (RASR.md §2) and its first drafts -> (ReflectRows, y(0) [B, Y],
  lengths [B]): text windows of the packed rows, the question/answer rows `qa`, or both
  (`reflect.source`); y(0) teacher-forced or decoded from x alone (`reflect.draft_mode`)."""
  window_key, draft_key = jax.random.split(key)
  model = nnx.merge(graphdef, params)
  parts, drafts = [], []
  text_count = cfg.text_rows // micro_batches
  if text_count:
    x, y_star, draft0 = reflection_windows(tokens, logits, text_count, cfg, window_key)
    width = 0 if qa is None else qa.reference.shape[1]
    parts.append(rows_lib.text_rows(x, y_star, width))
    drafts.append((draft0, jnp.full((text_count,), cfg.target_len, jnp.int32)))
  if cfg.qa_rows:
    if qa is None:
      raise ValueError(f"reflect.source={cfg.source} needs question/answer rows in the batch")
    parts.append(qa)
    if cfg.draft_mode == "teacher_forced":
      drafts.append(teacher_forced_answer_drafts(model, qa, cfg, draft_key))
  rows = rows_lib.concat(parts)
  if cfg.draft_mode == "teacher_forced":
    draft0 = jnp.concatenate([d for d, _ in drafts], axis=0)
    return rows, draft0, jnp.concatenate([n for _, n in drafts], axis=0)
  decoded = steps.decode_after(graphdef, params, model.embed_tokens(rows.prompt), rows.prompt_valid,
                               cfg.target_len, cfg.draft_temperature, draft_key, ids)
  return rows, decoded.tokens, decoded.lengths


def make_loss_fn(graphdef, config, special_ids, micro_batches=1, pieces=None, safety=None):
  """loss_fn(params, rows, qa, normalizer, key, tau, progress[, loss_weights]) -> (total, metrics).

  rows: PackedRows; qa: question/answer ReflectRows (None without them). The LM term is a sum
  over the counted targets, divided by `normalizer`; reflection terms are means, scaled by
  1 / micro_batches so that summing over micro-batches averages them. `pieces`: the tokenizer's
  PieceBytes, needed to read answers of question/answer rows. `loss_weights` ([3]: alpha, beta,
  gamma; default the config's) is the adaptive strategy's (strategy.py). `safety`: the drafts'
  safety qualities (safety_quality.py), with reflect.safety_dims.
  """
  r = config.reflect
  if r.enabled and r.qa_rows and pieces is None:
    raise ValueError(f"reflect.source={r.source} reads answers: make_loss_fn needs `pieces`")
  if r.enabled and r.critics.hierarchy and pieces is None:
    raise ValueError("a hierarchical critic finds sentences from token bytes: make_loss_fn "
                     "needs `pieces`")
  marks = spans.sentence_marks(pieces) if r.enabled and r.critics.hierarchy else None
  if r.enabled and r.safety_dim_names and safety is None:
    raise ValueError(f"reflect.safety_dims={r.safety_dims} labels drafts: make_loss_fn needs "
                     "`safety`")

  def loss_fn(params, rows: PackedRows, qa, normalizer, key, tau, progress, loss_weights=None):
    inputs, targets, weights, positions, mask = packing.inputs_and_targets(rows)
    model = nnx.merge(graphdef, params)
    logits, _ = model(inputs, positions=positions, mask=mask)
    lm = losses.lm_loss_sum(logits, targets, weights) / normalizer
    if not r.enabled:
      return lm, {"loss/lm": lm}
    rows_key, reflect_key = jax.random.split(key)
    reflect_rows, draft0, length0 = reflection_rows(graphdef, params, rows.tokens, logits, qa, r,
                                                    rows_key, special_ids, micro_batches)
    terms, metrics = reflect.reflect(graphdef,
                                     params,
                                     reflect_rows,
                                     draft0,
                                     length0,
                                     tau=tau,
                                     progress=progress,
                                     key=reflect_key,
                                     cfg=r,
                                     ids=special_ids,
                                     pieces=pieces if r.qa_rows else None,
                                     safety=safety,
                                     marks=marks)
    scale = 1.0 / micro_batches
    u = r.unified
    fixed = (u.paradigm_weight,) * 3 if u.enabled else (r.alpha, r.beta, r.gamma)
    alpha, beta, gamma = fixed if loss_weights is None else loss_weights
    if u.enabled:  # eq. 5: the paradigms, then the coordination terms with their own weight
      critic = terms["critic"] - terms["coordination"]
      total = (alpha * lm + scale *
               (beta * terms["reflect"] + gamma * critic + u.paradigm_weight * terms["controller"]
                + u.coordination_weight * terms["coordination"]))
    else:
      total = (alpha * lm + scale *
               (beta * terms["reflect"] + gamma * terms["critic"] + terms["controller"]))
    metrics = {k: v * scale for k, v in metrics.items()}
    metrics.update({
        "loss/lm": lm,
        "loss/reflect": terms["reflect"] * scale,
        "loss/critic": terms["critic"] * scale,
        "loss/controller": terms["controller"] * scale,
        "loss/coordination": terms["coordination"] * scale
    })
    return total, metrics

  return loss_fn


@dataclasses.dataclass(frozen=True)
class Objective:
  """A loss in place of pretraining's (post-training: posttrain/), on rows of its own type."""
  # (graphdef, micro_batches) -> loss_fn(params, rows, qa, normalizer, key, tau, progress) ->
  # (loss, metrics), as `make_loss_fn`'s; metrics summed over micro-batches
  make_loss_fn: Callable
  normalizer: Callable  # rows -> [] float32: what the loss's sums are divided by
  finish: Callable  # the summed metrics -> the metrics reported
  # (batch_size, row_len, batch sharding) -> one batch's rows as jax.ShapeDtypeStructs, for
  # compiling the step ahead of time (training/memory_fit.py)
  abstract_rows: Callable | None = None


def _pretraining_objective(config, special_ids, pieces, safety):
  return Objective(
      lambda graphdef, micro_batches: make_loss_fn(
          graphdef, config, special_ids, micro_batches=micro_batches, pieces=pieces, safety=safety),
      packing.target_count, lambda metrics: metrics)


def _micro_batches(batch, accum):
  """Every [B, ...] leaf -> [accum, B / accum, ...], micro-batch i taking rows i, accum + i, ...

  Every data-parallel shard keeps contributing to every micro-batch, so nothing moves.
  """

  def split(leaf):
    micro = leaf.reshape(leaf.shape[0] // accum, accum, *leaf.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(micro,
                                            jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))

  return jax.tree.map(split, batch)


def adapt_tau(tau, mean_iterations, progress, cfg):
  """Moves tau so that mean iterations approach reflect.stop_budget (0 = keep tau fixed).

  More iterations than the budget lower tau (stop when R_xi > tau, so stopping gets easier).
  Only while stopping is in effect (after reflect.stop_warmup).
  """
  if cfg.stop_budget <= 0:
    return tau
  moved = jnp.clip(tau - cfg.tau_lr * (mean_iterations - cfg.stop_budget), *TAU_RANGE)
  return jnp.where(reflect.stopping_enabled(progress, cfg), moved, tau)


def make_train_step(graphdef,
                    config,
                    tx,
                    special_ids=None,
                    grad_hook=None,
                    pieces=None,
                    objective=None,
                    safety=None):
  """train_step(state, rows, qa) -> (state, metrics).

  rows: the batch's PackedRows; qa: the batch's question/answer ReflectRows (reflect.source qa
  or mixed); `pieces` (the tokenizer's PieceBytes) reads their answers; `safety` labels drafts
  (safety_quality.py) for reflect.safety_dims. An `objective`
  (Objective) replaces pretraining's loss, with rows of its own.
  A non-finite loss or gradient norm drops the update: parameters, optimizer state (with its
  own step count, so the learning-rate schedule resumes where it was) and tau stay
  bit-identical, the step advances (its batch is consumed), `skipped` counts it, and
  metrics["finite"] is False (train.nan_policy=stop makes the loop end there).
  `grad_hook(step, loss, grads) -> (loss, grads)`, when given, transforms the loss and gradients
  of the update that makes `step`, before anything reads them (fault injection uses it).
  """
  accum = config.train.grad_accum_steps
  objective = objective or _pretraining_objective(config, special_ids, pieces, safety)
  loss_fn = objective.make_loss_fn(graphdef, accum)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  schedules = {
      g: optim.schedule(config.train, lr) for g, lr in optim.group_peak_lrs(config.train).items()
  }

  def train_step(state, rows, qa):
    normalizer = objective.normalizer(rows)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    progress = state.step.astype(jnp.float32) / config.train.steps
    weights = {}  # the adaptive strategy's loss weights, when there is one
    if state.strategy is not None:
      weights["loss_weights"] = strategy.loss_weights(state.strategy, config.reflect.strategies)
    if accum == 1:
      (loss, aux), grads = grad_fn(state.params, rows, qa, normalizer, key, state.tau, progress,
                                   **weights)
    else:

      def micro_step(carry, inputs):
        index, (micro_rows, micro_qa) = inputs
        out = grad_fn(state.params, micro_rows, micro_qa, normalizer,
                      jax.random.fold_in(key, index), state.tau, progress, **weights)
        return jax.tree.map(jnp.add, carry, out), None

      micro = _micro_batches((rows, qa), accum)  # [accum, B / accum, ...]
      first = jax.tree.map(lambda leaf: leaf[0], micro)
      zeros = jax.tree.map(
          lambda s: jnp.zeros(s.shape, s.dtype),
          jax.eval_shape(grad_fn, state.params, *first, normalizer, key, state.tau, progress,
                         **weights))
      ((loss, aux), grads), _ = jax.lax.scan(micro_step, zeros, (jnp.arange(accum), micro))
    if grad_hook is not None:
      loss, grads = grad_hook(state.step + 1, loss, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    norms = optim.group_norms(grads)
    grad_norm = jnp.sqrt(sum(jnp.square(n) for n in norms.values()))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    skipped = state.skipped + ~finite
    metrics = dict(objective.finish(aux),
                   loss=loss,
                   lr=schedules["generator"](state.step),
                   grad_norm=grad_norm,
                   finite=finite,
                   skipped_updates=skipped)
    for group, norm in norms.items():
      metrics[f"grad_norm/{group}"] = norm
      metrics[f"lr/{group}"] = schedules[group](state.step)
    if state.strategy is not None:
      metrics.update(strategy.metrics(state.strategy))
    tau = state.tau
    if config.reflect.enabled:
      tau = adapt_tau(state.tau, aux["reflect/mean_iterations"], progress, config.reflect)
      metrics["reflect/tau"] = state.tau

    def keep(new, old):  # the update only when finite
      return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

    new_state = state.replace(step=state.step + 1,
                              params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state),
                              tau=keep(tau, state.tau),
                              skipped=skipped)
    return new_state, metrics

  return train_step


def make_strategy_decision(graphdef, config, tx, special_ids, pieces, safety=None):
  """decide(state, rows, qa, held_rows, held_qa, key) -> state with the bandit updated
  (strategy.py): each strategy's look-ahead update from the gradient of its weighted loss on
  (rows, qa) (the first micro-batch with gradient accumulation), scored by the held-out quality
  -(L_standard + L_reflection) it reaches on (held_rows, held_qa). Every pass reads the same
  `key`, so the strategies differ by their weights alone."""
  cfg = config.reflect.strategies
  accum = config.train.grad_accum_steps
  loss_fn = make_loss_fn(graphdef, config, special_ids, pieces=pieces, safety=safety)
  grad_fn = jax.grad(loss_fn, has_aux=True)

  def quality(params, rows, qa, key, tau, progress):
    _, metrics = loss_fn(params, rows, qa, packing.target_count(rows), key, tau, progress)
    return -(metrics["loss/lm"] + metrics["loss/reflect"])

  def decide(state, rows, qa, held_rows, held_qa, key):
    progress = state.step.astype(jnp.float32) / config.train.steps
    if accum > 1:
      rows, qa = jax.tree.map(lambda leaf: leaf[0], _micro_batches((rows, qa), accum))
    normalizer = packing.target_count(rows)
    before = quality(state.params, held_rows, held_qa, key, state.tau, progress)

    def gain(weights):
      grads, _ = grad_fn(state.params, rows, qa, normalizer, key, state.tau, progress, weights)
      updates, _ = tx.update(grads, state.opt_state, state.params)
      after = quality(optax.apply_updates(state.params, updates), held_rows, held_qa, key,
                      state.tau, progress)
      return after - before

    gains = jnp.stack([gain(w) for w in strategy.table(cfg)])  # [S], one look-ahead at a time
    return state.replace(strategy=strategy.update(state.strategy, gains, cfg.eta))

  return decide


def make_eval_step(graphdef, config, special_ids=None, pieces=None, objective=None, safety=None):
  """eval_step(state, rows, qa, key) -> metrics: the training loss terms, no update."""
  objective = objective or _pretraining_objective(config, special_ids, pieces, safety)
  loss_fn = objective.make_loss_fn(graphdef, 1)

  def eval_step(state, rows, qa, key):
    normalizer = objective.normalizer(rows)
    progress = state.step.astype(jnp.float32) / config.train.steps
    loss, metrics = loss_fn(state.params, rows, qa, normalizer, key, state.tau, progress)
    return dict(objective.finish(metrics), loss=loss)

  return eval_step


def jit_train_step(train_step, state_shardings, mesh):
  """The step compiled for `mesh`: state sharded and donated, packed and question/answer rows
  split over the data axes."""
  batch = sharding.batch_sharding(mesh)
  return jax.jit(train_step,
                 in_shardings=(state_shardings, batch, batch),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=0)
