"""Faults: non-finite updates under both policies, and an abrupt crash between saves."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from conftest import STEPS, losses, make_config, run_main
from rasr_jax import config as config_lib
from rasr_jax import faults, optim, sharding, train_state, train_step
from rasr_jax.metrics import read_records

NO_REFLECT = {"reflect.enabled": False, "reflect.iterations": 0}


def test_a_non_finite_update_is_dropped_inside_the_step():
  """Poisoned loss and gradients leave parameters, optimizer state and tau bit-identical; the
  step advances and `skipped` counts it; later steps update normally (the optimizer's own count,
  hence its schedule, did not advance: the first learning rate of the warm-up is 0)."""
  config = config_lib.resolve_mesh(make_config(**NO_REFLECT), 1)
  mesh = sharding.make_mesh(config.mesh)
  state, _ = train_state.init_state(config, mesh)
  graphdef, abstract, _ = train_state.abstract_state(config)
  tx = optim.make_optimizer(config.train, abstract.params)
  step = jax.jit(train_step.make_train_step(graphdef, config, tx,
                                            faults=faults.Faults(nan_at_step=1)))
  tokens = jnp.asarray(np.random.RandomState(0).randint(
      6, config.model.vocab_size, (config.train.batch_size, config.data.seq_len + 1)), jnp.int32)
  with sharding.activate(mesh):
    after, metrics = step(state, tokens)
    later, later_metrics = step(*step(after, tokens)[:1], tokens)
  assert not bool(metrics["finite"]) and int(after.skipped) == 1 and int(after.step) == 1
  for before, kept in zip(jax.tree.leaves((state.params, state.opt_state, state.tau)),
                          jax.tree.leaves((after.params, after.opt_state, after.tau))):
    np.testing.assert_array_equal(before, kept)
  assert bool(later_metrics["finite"]) and int(later.skipped) == 1 and int(later.step) == 3
  assert any((a != b).any() for a, b in zip(jax.tree.leaves(after.params),
                                            jax.tree.leaves(later.params)))


def test_nan_policy_stop_exits_without_checkpointing_that_step(tmp_path):
  result = run_main(str(tmp_path), env={faults.ENV: "nan_at_step=3"},
                    **NO_REFLECT, **{"train.steps": 5, "checkpoint.every_steps": 1})
  assert result.returncode == 3, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: non-finite loss or gradients at step 3 (train.nan_policy=stop)")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_nan_policy_skip_trains_on(tmp_path):
  result = run_main(str(tmp_path), env={faults.ENV: "nan_at_step=3"},
                    **NO_REFLECT, **{"train.steps": 5, "train.nan_policy": "skip"})
  assert result.returncode == 0, result.stderr[-2000:]
  records = {r["step"]: r for r in read_records(str(tmp_path))}
  assert records[3]["finite"] == 0 and records[3]["skipped_updates"] == 1
  assert records[5]["finite"] == 1 and records[5]["skipped_updates"] == 1
  assert np.isfinite(records[5]["loss"])


def test_a_crash_between_saves_resumes_bit_identically(straight_run, tmp_path):
  """The process dies abruptly after step 6 (checkpoint at 4, written in the background);
  rerunning resumes from the newest complete checkpoint and every logged loss equals the
  uninterrupted run's, bit for bit."""
  reference, _ = straight_run
  crashed = run_main(str(tmp_path), env={faults.ENV: "crash_after_step=6"},
                     **{"train.steps": STEPS})
  assert crashed.returncode == faults.CRASH_EXIT_CODE, crashed.stderr[-2000:]
  assert [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()] in (["4"], [])
  resumed = run_main(str(tmp_path), **{"train.steps": STEPS})
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert losses(str(tmp_path)) == losses(reference)
