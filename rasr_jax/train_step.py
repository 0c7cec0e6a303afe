"""train_step(state, tokens) -> (state, metrics): the loss terms summed, one optimizer update.

The step is a pure function of pytrees; `jit_train_step` compiles it with explicit shardings and
a donated state. Gradient accumulation runs inside the step as a `lax.scan` over micro-batches.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rasr_jax import losses, optim, sharding


def _split_batch(tokens):
  """tokens [B, T + 1] -> inputs [B, T], targets [B, T], weights [B, T]."""
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  return inputs, targets, jnp.ones(targets.shape, jnp.float32)


def make_loss_fn(graphdef, config):
  """loss_fn(params, tokens, normalizer) -> (weighted total, metrics); sums over the rows."""

  def loss_fn(params, tokens, normalizer):
    inputs, targets, weights = _split_batch(tokens)
    model = nnx.merge(graphdef, params)
    logits, _ = model(inputs)
    lm = losses.lm_loss_sum(logits, targets, weights) / normalizer
    total = config.train.lm_weight * lm
    return total, {"loss/lm": lm}

  return loss_fn


def _micro_batches(tokens, steps):
  """[B, T + 1] -> [A, B / A, T + 1], micro-batch a taking rows a, A + a, 2A + a, ...

  Every data-parallel shard keeps contributing to every micro-batch, so nothing moves.
  """
  b = tokens.shape[0]
  micro = tokens.reshape(b // steps, steps, -1).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(micro, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))


def make_train_step(graphdef, config, tx):
  loss_fn = make_loss_fn(graphdef, config)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  lr_schedule = optim.schedule(config.train, optim.group_peak_lrs(config.train)["generator"])
  accum = config.train.grad_accum_steps

  def train_step(state, tokens):
    normalizer = jnp.float32(tokens.shape[0] * (tokens.shape[1] - 1))
    if accum == 1:
      (loss, aux), grads = grad_fn(state.params, tokens, normalizer)
    else:
      def micro_step(carry, micro_tokens):
        return jax.tree.map(jnp.add, carry, grad_fn(state.params, micro_tokens, normalizer)), None

      micro = _micro_batches(tokens, accum)  # [A, B / A, T + 1]
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(grad_fn, state.params, micro[0], normalizer))
      ((loss, aux), grads), _ = jax.lax.scan(micro_step, zeros, micro)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=lr_schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def jit_train_step(train_step, state_shardings, mesh):
  """The step compiled for `mesh`: state sharded and donated, tokens split over data axes."""
  return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
