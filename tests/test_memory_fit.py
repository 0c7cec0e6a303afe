"""train.grad_accum_steps=auto and model.remat_policy=auto: the settings chosen are those the
compiled step's memory analysis says fit a memory limit passed in (the test's CPU device
reports none), smallest accumulation and cheapest remat first."""

import dataclasses
import json

import pytest

from conftest import make_config, run_main
from rasr_jax import config as config_lib
from rasr_jax.posttrain import dpo
from rasr_jax.training import loop, memory_fit

STANDARD = {"reflect.enabled": False}  # the cheapest step to compile; the rules are the same


def _need(**overrides):
  """Bytes per device of the compiled step with these settings."""
  return memory_fit.step_memory(config_lib.resolve_mesh(make_config(**STANDARD, **overrides),
                                                        1)).total


def _limit_gib(usable_bytes):
  """The train.memory_limit_gib whose usable share is `usable_bytes`."""
  return usable_bytes / (1 - memory_fit.HEADROOM) / memory_fit.GIB


def _fit(**overrides):
  return memory_fit.resolve_auto(config_lib.resolve_mesh(make_config(**STANDARD, **overrides), 1))


@pytest.fixture(scope="module")
def needs():
  """{(grad_accum_steps, remat_policy): bytes} for the settings the tests fit between."""
  settings = [(1, "none"), (2, "none"), (1, "dots"), (1, "dots_no_batch")]
  return {
      (a, p): _need(**{
          "train.grad_accum_steps": a,
          "model.remat_policy": p
      }) for a, p in settings
  }


def test_smallest_accumulation_that_fits(needs):
  one, two = needs[(1, "none")], needs[(2, "none")]
  assert two < one  # each micro-batch is smaller
  limit = _limit_gib((one + two) // 2)
  config, fit = _fit(**{"train.grad_accum_steps": "auto", "train.memory_limit_gib": limit})
  assert config.train.grad_accum_steps == 2 and config.model.remat_policy == "none"
  assert fit.chosen.memory.total == two <= fit.usable_bytes < one
  tried = {(c.grad_accum_steps, c.remat_policy) for c in fit.tried}
  assert {(1, "none"), (2, "none")} <= tried
  assert fit.report()["chosen"] == {
      "grad_accum_steps": 2,
      "remat_policy": "none",
      "gib_per_device": round(two / memory_fit.GIB, 2),
      "fits": True
  }
  config, _ = _fit(**{"train.grad_accum_steps": "auto", "train.memory_limit_gib": 1000.0})
  assert config.train.grad_accum_steps == 1


def test_cheapest_remat_that_fits(needs):
  assert needs[(1, "dots_no_batch")] < needs[(1, "dots")] < needs[(1, "none")]
  limit = _limit_gib((needs[(1, "dots")] + needs[(1, "dots_no_batch")]) // 2)
  config, fit = _fit(**{"model.remat_policy": "auto", "train.memory_limit_gib": limit})
  assert config.model.remat_policy == "dots_no_batch" and config.train.grad_accum_steps == 1
  assert [c.remat_policy for c in fit.tried] == ["none", "dots", "dots_no_batch"]


def test_both_auto_prefer_accumulation_to_remat(needs):
  """Remat costs a recomputed forward pass, accumulation only smaller matmuls: with both auto a
  limit that no-remat meets with accumulation 2 gets that, not remat at accumulation 1."""
  assert needs[(1, "dots_no_batch")] < needs[(1, "none")]
  limit = _limit_gib((needs[(1, "none")] + needs[(2, "none")]) // 2)
  config, _ = _fit(**{
      "train.grad_accum_steps": "auto",
      "model.remat_policy": "auto",
      "train.memory_limit_gib": limit
  })
  assert (config.train.grad_accum_steps, config.model.remat_policy) == (2, "none")


def test_a_dpo_run_fits_its_own_step():
  """A DPO pair takes two rows: the fit compiles DPO's step, which needs more than pretraining's
  at the same batch, so a limit pretraining fits at accumulation 1 takes 2 for DPO."""
  config = config_lib.resolve_mesh(make_config(**STANDARD), 1)
  objective = dpo.make_objective(config.dpo, ["generation"])
  pretraining = memory_fit.step_memory(config).total
  pairs = {
      accum:
          memory_fit.step_memory(
              dataclasses.replace(config,
                                  train=dataclasses.replace(config.train, grad_accum_steps=accum)),
              objective).total for accum in (1, 2)
  }
  assert pretraining < pairs[1] and pairs[2] < pairs[1]
  limit = _limit_gib((max(pretraining, pairs[2]) + pairs[1]) // 2)
  auto = {"train.grad_accum_steps": "auto", "train.memory_limit_gib": limit}
  assert _fit(**auto)[0].train.grad_accum_steps == 1
  fitted, fit = memory_fit.resolve_auto(config_lib.resolve_mesh(make_config(**STANDARD, **auto), 1),
                                        objective)
  assert fitted.train.grad_accum_steps == 2 and fit.chosen.memory.total == pairs[2]


def test_a_run_with_safety_dimensions_fits():
  """The fit compiles the RASR step with its safety dimensions (text labels and robustness):
  it needs more memory than the same step without them."""
  without = memory_fit.step_memory(config_lib.resolve_mesh(make_config(), 1)).total
  config, fit = memory_fit.resolve_auto(
      config_lib.resolve_mesh(
          make_config(
              **{
                  "reflect.safety_dims": "privacy,robustness",
                  "train.grad_accum_steps": "auto",
                  "train.memory_limit_gib": 1000.0
              }), 1))
  assert config.train.grad_accum_steps == 1 and fit.chosen.memory.total > without


def test_nothing_fits_or_no_limit_is_one_error():
  with pytest.raises(config_lib.ConfigError, match=r"no setting fits .* the smallest need"):
    _fit(**{"train.grad_accum_steps": "auto", "train.memory_limit_gib": 1e-4})
  with pytest.raises(config_lib.ConfigError, match="report no memory limit"):
    _fit(**{"train.grad_accum_steps": "auto"})


@pytest.mark.parametrize("value", ["many", 0, -2, 1.5, True])
def test_accumulation_is_a_positive_int_or_auto(value):
  with pytest.raises(config_lib.ConfigError,
                     match='grad_accum_steps.*must be an int > 0 or "auto"'):
    make_config(**{"train.grad_accum_steps": value})


def test_training_starts_with_the_fitted_accumulation(needs, tmp_path):
  limit = _limit_gib((needs[(1, "none")] + needs[(2, "none")]) // 2)
  config = make_config(
      **STANDARD, **{
          "train.grad_accum_steps": "auto",
          "train.memory_limit_gib": limit,
          "train.steps": 2
      })
  run = loop.setup(config, str(tmp_path))
  assert run.config.train.grad_accum_steps == 2


def test_compile_mode_prints_the_choice_on_fake_devices(tmp_path):
  """8 fake CPU devices, the RASR step, a limit passed in: --mode=compile fits first, then
  reports the chosen step."""
  result = run_main(str(tmp_path),
                    "--mode=compile",
                    devices=8,
                    **{
                        "mesh.data": 2,
                        "mesh.fsdp": 2,
                        "mesh.tensor": 2,
                        "train.grad_accum_steps": "auto",
                        "model.remat_policy": "auto",
                        "train.memory_limit_gib": 1000.0
                    })
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  fit = report["memory_fit"]
  assert fit["chosen"] == {
      "grad_accum_steps": 1,
      "remat_policy": "none",
      "gib_per_device": report["gib_per_device"],
      "fits": True
  }
  assert report["grad_accum_steps"] == 1 and report["remat_policy"] == "none"
  assert fit["usable_gib"] == pytest.approx(900.0, abs=0.01)


def test_accumulation_keeps_the_reflecting_rows():
  """Each micro-batch needs a reflecting row per data shard: an accumulation that would round
  reflect.rows up (changing the method) is not a candidate."""
  candidates = lambda rows: [
      accum for accum, config in memory_fit._accumulations(
          config_lib.resolve_mesh(
              make_config(**{
                  "train.grad_accum_steps": "auto",
                  "reflect.rows": rows
              }), 1))
  ]
  assert candidates(4) == [1, 2, 4]  # batch 8: 8 micro-batches would need 8 rows
  assert candidates(0) == [1]  # B/8 = 1 row: one micro-batch
