"""Adaptive strategy evolution (UFARSAP, seed 003 eq. 23; docs/ufarsap.md): RASR's loss
weights (alpha, beta, gamma) chosen online by a multiplicative-weights bandit.

A strategy is one weight vector of `reflect.strategies.weights` (S of them, the first used
first). Every `reflect.strategies.every_steps` steps each strategy s is scored by its gain g_s:
how much one look-ahead update (the optimizer's update from the gradient of the loss weighted
by s, on that step's batch) raises held-out quality, -(L_standard + L_reflection) on the first
held-out batch (the same batch every time), over the parameters before it
(step.make_strategy_decision). The bandit then moves its log-weights by eta g_s / max_s |g_s|,
and the strategy of the largest log-weight replaces the current one only when its gain on that
batch beats the current strategy's (eq. 23). The bandit lives in the train state, and a decision
is a deterministic function of the state and the two batches, so a resumed run decides alike.
"""

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class StrategyState:
  log_weights: jax.Array  # [S] float32: the bandit's
  current: jax.Array  # [] int32: the strategy the step trains with
  gains: jax.Array  # [S] float32: each strategy's held-out gain at the latest decision
  switches: jax.Array  # [] int32: strategies adopted so far
  adopted: jax.Array  # [S] bool: the strategies ever trained with (the first from the start)


def table(cfg) -> jax.Array:
  """[S, 3] float32: the strategies' (alpha, beta, gamma)."""
  return jnp.asarray(cfg.vectors(), jnp.float32)


def init(cfg) -> StrategyState:
  count = len(cfg.vectors())
  return StrategyState(log_weights=jnp.zeros((count,), jnp.float32),
                       current=jnp.zeros((), jnp.int32),
                       gains=jnp.zeros((count,), jnp.float32),
                       switches=jnp.zeros((), jnp.int32),
                       adopted=jnp.arange(count) == 0)


def loss_weights(state: StrategyState, cfg) -> jax.Array:
  """[3]: the current strategy's (alpha, beta, gamma)."""
  return table(cfg)[state.current]


def update(state: StrategyState, gains, eta) -> StrategyState:
  """The bandit after a decision whose strategies gained `gains` [S] on the held-out batch; a
  non-finite gain moves nothing and is never adopted."""
  finite = jnp.isfinite(gains)
  gains = jnp.where(finite, gains, 0.0)
  scale = jnp.maximum(jnp.max(jnp.abs(gains)), 1e-12)
  log_weights = state.log_weights + eta * gains / scale
  candidate = jnp.argmax(log_weights).astype(jnp.int32)  # the first on a tie
  adopt = finite[candidate] & (gains[candidate] > gains[state.current])
  current = jnp.where(adopt, candidate, state.current)
  return StrategyState(log_weights=log_weights,
                       current=current,
                       gains=gains.astype(jnp.float32),
                       switches=state.switches + adopt.astype(jnp.int32),
                       adopted=state.adopted.at[current].set(True))


def probabilities(state: StrategyState) -> jax.Array:
  """[S]: the bandit's distribution over the strategies (softmax of its log-weights)."""
  return jax.nn.softmax(state.log_weights)


def metrics(state: StrategyState) -> dict:
  """strategy/current, strategy/switches, strategy/distinct (the novelty of the strategies
  chosen: how many different ones have been trained with), and per strategy s its probability
  and latest gain."""
  out = {
      "strategy/current": state.current,
      "strategy/switches": state.switches,
      "strategy/distinct": jnp.sum(state.adopted).astype(jnp.int32)
  }
  for s, (p, g) in enumerate(zip(probabilities(state), state.gains)):
    out[f"strategy/probability/{s}"] = p
    out[f"strategy/gain/{s}"] = g
  return out
