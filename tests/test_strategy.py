"""Adaptive strategy evolution: the bandit adopts a strategy only when it wins on the held-out
batch, its state resumes bit-identically, one strategy is the fixed-weight step, bad strategy
sets are one error line."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import STEPS, assert_resume_is_bit_identical, losses, make_config, run_main
from rasr_jax.training import loop, strategy
from rasr_jax.training.metrics import read_records

STRATEGIES = {
    "reflect.strategies.weights": "0.6,0.3,0.1;1,0,0;0.2,1,0.5",
    "reflect.strategies.every_steps": 2,
    "train.eval_batches": 1,
}


def _state(log_weights, current):
  return strategy.StrategyState(log_weights=jnp.asarray(log_weights, jnp.float32),
                                current=jnp.asarray(current, jnp.int32),
                                gains=jnp.zeros((len(log_weights),), jnp.float32),
                                switches=jnp.zeros((), jnp.int32),
                                adopted=jnp.arange(len(log_weights)) == current)


def test_a_strategy_is_adopted_only_when_it_beats_the_current_one():
  # The bandit's favourite wins this batch too: adopted.
  after = strategy.update(_state([0, 0, 0], 0), jnp.asarray([0.1, 0.3, -0.2]), 1.0)
  np.testing.assert_allclose(after.log_weights, [1 / 3, 1, -2 / 3], rtol=1e-6)
  assert int(after.current) == 1 and int(after.switches) == 1
  assert after.adopted.tolist() == [True, True, False]
  # Going back to a strategy used before is a switch, not a new one.
  back = strategy.update(after, jnp.asarray([5.0, 0.0, 0.0]), 10.0)
  assert int(back.current) == 0 and int(back.switches) == 2
  assert int(strategy.metrics(back)["strategy/distinct"]) == 2
  # Its favourite (by past batches) loses this batch to the current one: kept out.
  after = strategy.update(_state([0, 5, 0], 0), jnp.asarray([0.2, 0.1, 0.0]), 1.0)
  assert int(np.argmax(after.log_weights)) == 1
  assert int(after.current) == 0 and int(after.switches) == 0
  # A non-finite gain moves nothing and is never adopted.
  after = strategy.update(_state([0, 0, 0], 0), jnp.asarray([0.0, jnp.nan, -0.1]), 1.0)
  assert np.all(np.isfinite(after.log_weights)) and int(after.current) == 0


@pytest.fixture(scope="module")
def strategy_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("strategies"))
  config = make_config(**{"train.steps": STEPS, **STRATEGIES})
  loop.train(config, workdir)
  return workdir, config


def test_decisions_follow_the_rule_and_are_logged(strategy_run):
  """Every logged decision: the strategy changes only to one whose gain beat the current's."""
  records = read_records(strategy_run[0])
  assert all("strategy/current" in r and "strategy/gain/2" in r for r in records)
  gains = [np.array([r[f"strategy/gain/{s}"] for s in range(3)]) for r in records]
  for before, after, gain in zip(records, records[1:], gains[1:]):
    if after["strategy/switches"] > before["strategy/switches"]:
      assert gain[int(after["strategy/current"])] > gain[int(before["strategy/current"])]
    else:
      assert after["strategy/current"] == before["strategy/current"]
  assert any(np.any(g != 0) for g in gains)  # decisions were made and measured something


def test_the_bandit_resumes_bit_identically(strategy_run, tmp_path):
  workdir, config = strategy_run
  assert_resume_is_bit_identical(config, workdir, str(tmp_path))

  def trace(folder):
    return [{k: v for k, v in r.items() if k.startswith("strategy/")} for r in read_records(folder)]

  assert trace(str(tmp_path)) == trace(workdir)


def test_one_strategy_of_the_fixed_weights_is_the_fixed_step(straight_run, tmp_path):
  """A single strategy equal to (alpha, beta, gamma) trains as the step without strategies."""
  workdir, config = straight_run
  single = make_config(
      **{
          "train.steps": STEPS,
          **STRATEGIES, "reflect.strategies.weights":
              f"{config.reflect.alpha},"
              f"{config.reflect.beta},{config.reflect.gamma}"
      })
  loop.train(single, str(tmp_path))
  got, want = losses(str(tmp_path)), losses(workdir)
  assert sorted(got) == sorted(want)
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-5), step


@pytest.mark.parametrize("weights, message", [
    ("1,1", "is not three finite numbers"),
    ("1,1,1;", "'' is not three numbers"),
    ("1,-1,1", "weights must be >= 0"),
    ("0,0,0", "not all 0"),
])
def test_bad_strategy_sets_are_one_error_line(weights, message, tmp_path):
  result = run_main(str(tmp_path), **{**STRATEGIES, "reflect.strategies.weights": weights})
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.reflect.strategies.weights=") and message in last


def test_the_strategy_trace_is_a_plot(strategy_run, tmp_path):
  from rasr_jax.evaluation import plots
  path = plots.strategy_trace(str(tmp_path / "trace.png"), read_records(strategy_run[0]))
  assert open(path, "rb").read(4) == b"\x89PNG"
