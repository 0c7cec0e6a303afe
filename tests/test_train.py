"""End-to-end training: falling loss, bit-identical resume (also after SIGTERM), sharding."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, cli_args, losses, make_config, run_main, subprocess_env
from rasr_jax import checkpoint, sharding, train, train_state

STEPS = 8


def restored_params(workdir, config):
  """Parameters of the newest checkpoint in `workdir` as numpy arrays (1-device mesh)."""
  config = train.config_lib.resolve_mesh(config, 1)
  mesh = sharding.make_mesh(config.mesh)
  _, abstract, specs = train_state.abstract_state(config)
  _, state = checkpoint.restore_latest(workdir, config, abstract,
                                       train_state.to_shardings(specs, mesh))
  return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


def params_hash(workdir, config):
  digest = hashlib.sha256()
  for leaf in restored_params(workdir, config):
    digest.update(leaf.tobytes())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """The uninterrupted reference run of STEPS steps, in this process."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = make_config(**{"train.steps": STEPS})
  train.train(config, workdir)
  return workdir, config


def test_loss_falls(straight_run):
  workdir, _ = straight_run
  by_step = losses(workdir)
  assert sorted(by_step) == list(range(1, STEPS + 1))
  assert by_step[STEPS] < by_step[1] - 0.5


def test_metrics_keys(straight_run):
  workdir, _ = straight_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    record = json.loads(f.readline())
  for key in ("step", "loss", "loss/lm", "lr", "grad_norm", "tokens_per_sec", "step_time_s", "mfu"):
    assert key in record, key
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resume_is_bit_identical(straight_run, tmp_path):
  reference, config = straight_run
  workdir = str(tmp_path)
  train.train(config, workdir, stop_at_step=STEPS // 2)
  assert max(losses(workdir)) == STEPS // 2
  train.train(config, workdir)
  assert losses(workdir) == losses(reference)
  assert params_hash(workdir, config) == params_hash(reference, config)


def test_sigterm_saves_and_resumes_bit_identically(straight_run, tmp_path):
  reference, config = straight_run
  workdir = str(tmp_path)
  cmd = [sys.executable, "-m", "rasr_jax.main", f"--config={REPO}/configs/tiny.py",
         f"--workdir={workdir}", *cli_args(**{"train.steps": STEPS})]
  proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  target = random.Random(time.time()).randint(1, STEPS - 3)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics_path) and len(open(metrics_path).readlines()) >= target:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  _, stderr = proc.communicate(timeout=240)
  assert proc.returncode == 0, stderr[-3000:]
  saved = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), config.checkpoint)
  stopped_at = saved.latest_step()
  saved.close()
  assert stopped_at < STEPS, "SIGTERM arrived too late to test anything"
  assert max(losses(workdir)) == stopped_at
  result = run_main(workdir, **{"train.steps": STEPS})
  assert result.returncode == 0, result.stderr[-3000:]
  assert losses(workdir) == losses(reference)
  assert params_hash(workdir, config) == params_hash(reference, config)


def test_sharded_training_equals_single_device(straight_run, tmp_path):
  """The trainer on a (data=2, fsdp=2, tensor=2) mesh of 8 fake devices matches 1 device.

  With RASR on (the tiny default), so the whole reflection step is checked sharded.
  """
  reference, config = straight_run
  assert config.reflect.enabled
  workdir = str(tmp_path)
  result = run_main(workdir, devices=8,
                    **{"train.steps": STEPS, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  assert result.returncode == 0, result.stderr[-3000:]
  got, want = losses(workdir), losses(reference)
  assert sorted(got) == sorted(want)
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-5)
  # Relative to each tensor's norm: Adam turns a 1e-7 gradient difference on a near-zero
  # gradient entry into a visible elementwise difference, but not into a norm difference.
  for x, y in zip(restored_params(workdir, config), restored_params(reference, config)):
    assert np.linalg.norm(x - y) <= 1e-5 * np.linalg.norm(y)


def test_checkpoint_of_another_model_is_refused(straight_run, tmp_path):
  reference, _ = straight_run
  import shutil
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  result = run_main(workdir, **{"train.steps": STEPS + 2, "model.mlp_dim": 96})
  assert result.returncode == 2
  assert "blocks/mlp/w_up" in result.stderr and "blocks/mlp/w_down" in result.stderr
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
