"""Shared helpers: small configs, CLI runs in subprocesses, and fake-device subprocesses."""

import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Evaluation tasks read local fixture files only (set before any HuggingFace library loads).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The test process itself sees one CPU device; multi-device runs happen in subprocesses.
os.environ.pop("XLA_FLAGS", None)
# Compiled steps are shared between tests and their subprocesses through jax's persistent
# compilation cache (keyed by the program, so a hit is the same executable).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "rasr_jax_tests_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Small shapes that keep a CPU step well under a second.
SMALL = {
    "model.vocab_size": 512,
    "model.d_model": 64,
    "model.num_layers": 2,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "model.head_dim": 16,
    "model.mlp_dim": 128,
    "data.seq_len": 32,
    "data.bundled_examples": 2000,
    "train.batch_size": 8,
    "train.steps": 8,
    "train.warmup_steps": 2,
    "train.lr": 3e-3,
    "train.log_every_steps": 1,
    "checkpoint.every_steps": 4,
    "mesh.data": 1,
    "mesh.fsdp": -1,
    "mesh.tensor": 1,
    "reflect.prompt_len": 16,
    "reflect.target_len": 8,
    "reflect.rows": 4,
    "reflect.stop_budget": 1.5,
    # Text windows with teacher-forced drafts: the cheapest reflection; tests of question/answer
    # rows and free-running drafts add QA.
    "reflect.source": "text",
    "reflect.draft_mode": "teacher_forced",
}
# Question/answer rows of the bundled tasks (those whose answers fit Y: logic and facts) with
# drafts decoded free-running, the defaults of configs/tiny.py at small shapes.
QA = {
    "reflect.source": "qa",
    "reflect.draft_mode": "autoregressive",
    "reflect.target_len": 24,
}


def make_config(**overrides):
  """configs/tiny.py with the SMALL shapes and `overrides` ('a.b' keys), validated."""
  from configs import tiny
  from rasr_jax import config as config_lib
  cd = tiny.get_config()
  for key, value in {**SMALL, **overrides}.items():
    node = cd
    *parents, leaf = key.split(".")
    for p in parents:
      node = getattr(node, p)
    setattr(node, leaf, value)
  return config_lib.load(cd)


def cli_args(**overrides):
  return [f"--config.{k}={v}" for k, v in {**SMALL, **overrides}.items()]


def subprocess_env(devices=1):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def main_command(workdir, *extra, **overrides):
  """`python -m rasr_jax.main` on configs/tiny.py with SMALL shapes and `overrides`."""
  return [
      sys.executable, "-m", "rasr_jax.main", f"--config={REPO}/configs/tiny.py",
      f"--workdir={workdir}", *cli_args(**overrides), *extra
  ]


def on_fake_gcs(root, argv):
  """`argv` (a `python -m MODULE ...` command) with gs:// served from the folder `root`
  (tests/fake_gcs.py)."""
  return [argv[0], os.path.join(REPO, "tests", "fake_gcs.py"), root, *argv[1:]]


def run_main(workdir, *extra, devices=1, timeout=300, env=None, **overrides):
  """Runs `main_command` (with extra environment variables `env`); returns the result."""
  return subprocess.run(main_command(workdir, *extra, **overrides),
                        cwd=REPO,
                        env={
                            **subprocess_env(devices),
                            **(env or {})
                        },
                        capture_output=True,
                        text=True,
                        timeout=timeout)


def _run_in_repo(argv, devices, timeout, env):
  return subprocess.run(argv,
                        cwd=REPO,
                        env={
                            **subprocess_env(devices),
                            **(env or {})
                        },
                        capture_output=True,
                        text=True,
                        timeout=timeout)


def run_checked(argv, devices=1, timeout=300, env=None):
  """Runs `argv` from the repository with `devices` fake CPU devices (and extra environment
  variables `env`); fails the test with its stderr unless it exits 0; returns stdout."""
  result = _run_in_repo(argv, devices, timeout, env)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def run_refused(argv, devices=1, timeout=300, env=None):
  """Runs `argv` as run_checked does, expecting it to stop with exit code 2 after one `error:`
  line; returns that line."""
  result = _run_in_repo(argv, devices, timeout, env)
  assert result.returncode == 2, result.stderr[-4000:]
  return result.stderr.strip().splitlines()[-1]


def run_python(code, devices=1, timeout=300):
  """Runs Python `code` in a fresh process with `devices` fake CPU devices; returns stdout."""
  return run_checked([sys.executable, "-c", code], devices, timeout)


def losses(workdir):
  from rasr_jax.training.metrics import read_records
  return {r["step"]: r["loss"] for r in read_records(workdir)}


def restored_params(workdir, config):
  """Parameters of the newest checkpoint in `workdir` as numpy arrays (1-device mesh)."""
  import jax
  import numpy as np

  from rasr_jax import config as config_lib
  from rasr_jax import sharding
  from rasr_jax.training import checkpoint, train_state
  config = config_lib.resolve_mesh(config, 1)
  mesh = sharding.make_mesh(config.mesh)
  _, abstract, specs = train_state.abstract_state(config)
  checkpointer = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir),
                                         config.checkpoint,
                                         read_only=True)
  try:
    state = checkpointer.restore(
        checkpointer.latest_step(),
        checkpoint.with_shardings(abstract, train_state.to_shardings(specs, mesh)))
  finally:
    checkpointer.close()
  return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


def params_hash(workdir, config):
  import hashlib
  digest = hashlib.sha256()
  for leaf in restored_params(workdir, config):
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def train_on_mesh(workdir, mesh, **overrides):
  """`run_main` on a (data, fsdp, tensor) mesh of as many fake devices; fails on an error."""
  data, fsdp, tensor = mesh
  result = run_main(workdir,
                    devices=data * fsdp * tensor,
                    **overrides,
                    **{
                        "mesh.data": data,
                        "mesh.fsdp": fsdp,
                        "mesh.tensor": tensor
                    })
  assert result.returncode == 0, result.stderr[-3000:]


def assert_same_losses(workdir, reference, rel=1e-5):
  """The two runs logged the same steps with the same losses (within `rel`)."""
  got, want = losses(workdir), losses(reference)
  assert sorted(got) == sorted(want)
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=rel), step


def assert_same_run(config, workdir, reference):
  """The runs in `workdir` and `reference` logged the same losses and ended with the same
  parameters, bit for bit."""
  assert losses(workdir) == losses(reference)
  assert params_hash(workdir, config) == params_hash(reference, config)


def assert_resume_is_bit_identical(config, reference, workdir):
  """Training `config` in `workdir` cut at half its steps and resumed ends exactly as the
  uninterrupted run in `reference`: the same losses and parameters, bit for bit."""
  from rasr_jax.training import loop
  half = config.train.steps // 2
  loop.train(config, workdir, stop_at_step=half)
  assert max(losses(workdir)) == half
  loop.train(config, workdir)
  assert_same_run(config, workdir, reference)


def assert_resume_from_the_last_but_one_checkpoint_is_bit_identical(config, reference, workdir):
  """A copy of the finished run in `reference` without its last checkpoint and without the
  records after the checkpoint before it (a run killed right after that save) resumes in
  `workdir` and ends as the straight run did: the same losses and parameters, bit for bit. One
  training run where `assert_resume_is_bit_identical` takes two (for steps that the persistent
  compilation cache cannot share: those with host callbacks)."""
  import json
  import shutil

  from rasr_jax.training import checkpoint, loop
  shutil.copytree(reference, workdir, dirs_exist_ok=True)
  checkpoints = checkpoint.checkpoint_dir(workdir)
  saved = sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit())
  assert len(saved) >= 2 and saved[-1] == config.train.steps, saved
  shutil.rmtree(os.path.join(checkpoints, str(saved[-1])))
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    kept = [line for line in f if json.loads(line)["step"] <= saved[-2]]
  with open(path, "w") as f:
    f.writelines(kept)
  assert max(losses(workdir)) == saved[-2]
  loop.train(config, workdir)
  assert_same_run(config, workdir, reference)


def logged_steps(workdir):
  """How many complete records WORKDIR/metrics.jsonl holds (0 before it exists)."""
  from rasr_jax.training.metrics import read_records
  return len(read_records(workdir)) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else 0


@pytest.fixture
def small_config():
  return make_config


STEPS = 8  # length of the shared reference training run


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory):
  """(workdir, config) of an uninterrupted tiny RASR run of STEPS steps, in this process."""
  from rasr_jax.training import loop
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = make_config(**{"train.steps": STEPS})
  loop.train(config, workdir)
  return workdir, config


def pytest_addoption(parser):
  parser.addoption("--slow", action="store_true", help="also run the tests marked slow")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long runs (the full fault soak); run with --slow")


def pytest_collection_modifyitems(config, items):
  if not config.getoption("--slow"):
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
      if "slow" in item.keywords:
        item.add_marker(skip)
