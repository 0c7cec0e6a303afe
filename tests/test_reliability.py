"""Faults: non-finite updates under both policies; crashes between saves, inside a data read and
in each phase of a save; resumes at every cut point; a checkpoint directory that becomes
unwritable; random SIGKILLs; restores (onto the same mesh: the fresh state's tree and no new
compilation; onto other meshes)."""

import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (
    REPO,
    STEPS,
    losses,
    main_command,
    make_config,
    params_hash,
    run_main,
    run_python,
    subprocess_env,
)
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.data import sources
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.data.packing import PackedRows
from rasr_jax.training import checkpoint as ckpt_lib
from rasr_jax.training import faults, loop, optim, train_state
from rasr_jax.training import step as train_step
from rasr_jax.training.metrics import read_records

NO_REFLECT = {"reflect.enabled": False, "reflect.iterations": 0}
# The cut-point, fault-chain and unwritable-directory runs: reflection off, 12 documents (an
# epoch ends every few steps), a checkpoint after every step, no held-out evaluation.
PLAIN = {
    **NO_REFLECT, "data.bundled_examples": 12,
    "train.steps": STEPS,
    "checkpoint.every_steps": 1,
    "train.eval_batches": 0
}


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
  """(workdir, config) of an uninterrupted PLAIN run, in this process."""
  workdir = str(tmp_path_factory.mktemp("plain"))
  config = make_config(**PLAIN)
  loop.train(config, workdir)
  return workdir, config


def test_a_non_finite_update_is_dropped_inside_the_step():
  """Poisoned loss and gradients leave parameters, optimizer state and tau bit-identical; the
  step advances and `skipped` counts it; later steps update normally (the optimizer's own count,
  hence its schedule, did not advance: the first learning rate of the warm-up is 0)."""
  config = config_lib.resolve_mesh(make_config(**NO_REFLECT), 1)
  mesh = sharding.make_mesh(config.mesh)
  state, _ = train_state.init_state(config, mesh)
  graphdef, abstract, _ = train_state.abstract_state(config)
  tx = optim.make_optimizer(config.train, abstract.params)
  step = jax.jit(
      train_step.make_train_step(graphdef,
                                 config,
                                 tx,
                                 grad_hook=faults.grad_hook(faults.Faults(nan_at_step=1))))
  tokens = PackedRows(
      jnp.asarray(
          np.random.RandomState(0).randint(6, config.model.vocab_size,
                                           (config.train.batch_size, config.data.seq_len + 1)),
          jnp.int32))
  with sharding.activate(mesh):
    after, metrics = step(state, tokens, None)
    later, later_metrics = step(step(after, tokens, None)[0], tokens, None)
  assert not bool(metrics["finite"]) and int(after.skipped) == 1 and int(after.step) == 1
  for before, kept in zip(jax.tree.leaves((state.params, state.opt_state, state.tau)),
                          jax.tree.leaves((after.params, after.opt_state, after.tau))):
    np.testing.assert_array_equal(before, kept)
  assert bool(later_metrics["finite"]) and int(later.skipped) == 1 and int(later.step) == 3
  assert any(
      (a != b).any() for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(later.params)))


def test_nan_policy_stop_exits_without_checkpointing_that_step(tmp_path):
  result = run_main(str(tmp_path),
                    env={faults.ENV: "nan_at_step=3"},
                    **NO_REFLECT,
                    **{
                        "train.steps": 5,
                        "checkpoint.every_steps": 1
                    })
  assert result.returncode == 3, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: non-finite loss or gradients at step 3 (train.nan_policy=stop)")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_nan_policy_skip_trains_on(tmp_path):
  result = run_main(str(tmp_path),
                    env={faults.ENV: "nan_at_step=3"},
                    **NO_REFLECT,
                    **{
                        "train.steps": 5,
                        "train.nan_policy": "skip"
                    })
  assert result.returncode == 0, result.stderr[-2000:]
  records = {r["step"]: r for r in read_records(str(tmp_path))}
  assert records[3]["finite"] == 0 and records[3]["skipped_updates"] == 1
  assert records[5]["finite"] == 1 and records[5]["skipped_updates"] == 1
  assert np.isfinite(records[5]["loss"])


def _first_epoch_end(config, workdir):
  """The step whose batch holds the last token of the first epoch (one data stream)."""
  tokenizer = tok_lib.existing(workdir, config.data.tokenizer, config.model.vocab_size)
  tokens = sum(
      len(tokenizer.encode(doc)) + 1
      for doc in sources.load_corpus(config.data, config.seed).documents)
  return math.ceil(tokens / (config.train.batch_size * (config.data.seq_len + 1)))


def test_resume_at_every_cut_point_equals_the_straight_run(plain_run, tmp_path):
  """RELIABILITY.md item 3 in the trainer: stopped after the first step, mid-epoch, at the end
  of the first epoch and one step before the last, then resumed to the end and once more at the
  last step (nothing left to train): every logged loss and the final state equal the straight
  run's, so every batch came in the same order."""
  reference, config = plain_run
  epoch_end = _first_epoch_end(config, reference)
  assert 2 < epoch_end < STEPS - 1, epoch_end
  workdir = str(tmp_path)
  for cut in (1, epoch_end - 1, epoch_end, STEPS - 1, STEPS, STEPS):
    loop.train(config, workdir, stop_at_step=cut)
    assert max(losses(workdir)) == cut
  _assert_same_run(config, workdir, reference)


def _checkpoints(directory):
  """(complete steps, names of temporary step directories) in a checkpoint directory."""
  names = os.listdir(directory)
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if not n.isdigit())


def test_crashes_in_a_data_read_and_in_each_save_phase_resume_bit_identically(plain_run, tmp_path):
  """RASR_FAULTS kills the trainer (os._exit, no cleanup) inside the read of a batch, right after
  a step, and in each phase of a save: before orbax has the state, at commit (every file written
  into the temporary directory, not yet renamed) and once the save is done. Each leaves the
  expected newest complete checkpoint (a crash outside a save can interrupt the save of the
  step before it, in the background); each rerun resumes from it (the temporary directory
  removed), and the run ends with the straight run's losses and state."""
  reference, config = plain_run
  workdir = str(tmp_path)
  chain = [("crash_in_save=2:done", {2}, False), ("crash_in_data_read=4", {2, 3}, None),
           ("crash_in_save=5:request", {4}, False), ("crash_after_step=6", {5, 6}, None),
           ("crash_in_save=7:commit", {6}, True)]
  for fault, newest, left_temporary in chain:
    result = run_main(workdir, env={faults.ENV: fault}, **PLAIN)
    assert result.returncode == faults.CRASH_EXIT_CODE, (fault, result.stderr[-2000:])
    steps, temporary = _checkpoints(ckpt_lib.checkpoint_dir(workdir))
    assert steps[-1] in newest, (fault, steps)
    assert left_temporary in (None, bool(temporary)), (fault, temporary)
  result = run_main(workdir, **PLAIN)
  assert result.returncode == 0, result.stderr[-2000:]
  _assert_same_run(config, workdir, reference)


def _wait_until_stopped(proc, timeout=240):
  """Waits until `proc` is stopped by a signal (state T in /proc), or has ended."""
  deadline = time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    with open(f"/proc/{proc.pid}/stat") as f:
      if f.read().rsplit(")", 1)[1].split()[0] == "T":
        return
    time.sleep(0.01)


def test_a_checkpoint_directory_that_becomes_unwritable_stops_the_run(plain_run, tmp_path):
  """RELIABILITY.md item 7: `checkpoints` is a link; once step 2's checkpoint is complete the
  run stops itself (the `stop_after_save` fault) and the link is moved into sysfs (which not even
  root can write). Step 3's save fails: the run exits with code 4 and one error line naming it,
  last on stderr; nothing after step 2 is listed, and after the link is put back the run
  resumes to the straight run's losses and state."""
  reference, config = plain_run
  workdir, real = str(tmp_path / "run"), str(tmp_path / "real_checkpoints")
  link = os.path.join(workdir, "checkpoints")
  os.makedirs(real)
  os.makedirs(workdir)
  os.symlink(real, link)
  proc = subprocess.Popen(main_command(workdir, **PLAIN),
                          cwd=REPO,
                          env={
                              **subprocess_env(), faults.ENV: "stop_after_save=2"
                          },
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE,
                          text=True)
  _wait_until_stopped(proc)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  os.symlink("/sys/kernel", link + ".new")
  os.replace(link + ".new", link)
  saved_before = _checkpoints(real)
  assert saved_before == ([1, 2], [])
  proc.send_signal(signal.SIGCONT)
  _, stderr = proc.communicate(timeout=240)
  assert proc.returncode == 4, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert re.match(r"error: checkpoint save of step 3 failed", last), last
  assert max(losses(workdir)) == 3
  assert _checkpoints(real) == saved_before
  os.remove(link)  # the link points at the real directory again
  os.symlink(real, link)
  result = run_main(workdir, **PLAIN)
  assert result.returncode == 0, result.stderr[-2000:]
  _assert_same_run(config, workdir, reference)


def _restore(config, workdir, mesh):
  """(restored TrainState of the newest checkpoint on `mesh`, fresh state, shardings)."""
  fresh, shardings = train_state.init_state(config, mesh)
  _, abstract, _ = train_state.abstract_state(config)
  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), config.checkpoint)
  try:
    restored = checkpointer.restore(checkpointer.latest_step(),
                                    ckpt_lib.with_shardings(abstract, shardings))
  finally:
    checkpointer.close()
  return restored, fresh, shardings


def test_restored_state_matches_a_fresh_one_and_compiles_nothing_new(straight_run):
  workdir, config = straight_run
  config = config_lib.resolve_mesh(config, 1)
  mesh = sharding.make_mesh(config.mesh)
  restored, fresh, shardings = _restore(config, workdir, mesh)
  assert jax.tree.structure(restored) == jax.tree.structure(fresh)
  for new, old in zip(jax.tree.leaves(restored), jax.tree.leaves(fresh)):
    assert (new.shape, new.dtype, new.sharding) == (old.shape, old.dtype, old.sharding)
  graphdef, abstract, _ = train_state.abstract_state(config)
  tokenizer = tok_lib.existing(workdir, config.data.tokenizer, config.model.vocab_size)
  step = train_step.jit_train_step(
      train_step.make_train_step(graphdef, config,
                                 optim.make_optimizer(config.train, abstract.params),
                                 tokenizer.marker_ids), shardings, mesh)
  tokens = PackedRows(
      jnp.asarray(
          np.random.RandomState(0).randint(6, config.model.vocab_size,
                                           (config.train.batch_size, config.data.seq_len + 1)),
          jnp.int32))
  with sharding.activate(mesh):
    jax.block_until_ready(step(fresh, tokens, None))
    compiled = step._cache_size()
    jax.block_until_ready(step(restored, tokens, None))
  assert step._cache_size() == compiled == 1


_DIGESTS = """
import hashlib, json, sys
import jax
devices = jax.device_count()  # before conftest, which clears XLA_FLAGS for the test process
sys.path.insert(0, "tests")
from conftest import make_config
from rasr_jax import config as config_lib, sharding
from test_reliability import _restore
for mesh_shape in {meshes}:
  config = config_lib.resolve_mesh(make_config(**{{
      "mesh.data": mesh_shape[0], "mesh.fsdp": mesh_shape[1], "mesh.tensor": mesh_shape[2],
      "reflect.rows": mesh_shape[0] * mesh_shape[1]}}), devices)  # rows do not shape the state
  mesh = sharding.make_mesh(config.mesh)
  state = _restore(config, {workdir!r}, mesh)[0]
  leaves = jax.tree.leaves(state)
  print(json.dumps({{"mesh": dict(mesh.shape),
                    "devices": [len(x.sharding.device_set) for x in leaves],
                    "digests": [hashlib.sha256(jax.device_get(x).tobytes()).hexdigest()
                                for x in leaves]}}))
"""


def test_a_checkpoint_restores_onto_other_meshes_with_identical_values(straight_run):
  """The 1-device checkpoint restores onto 8 devices as data x fsdp 4x2 and 2x4, and onto 4
  devices: every leaf of the train state (parameters, optimizer state, step, key, tau) has the
  same bytes, and the sharded leaves really are spread over the new mesh."""
  workdir, config = straight_run
  want = _state_digests(config, workdir)
  runs = [(8, [(4, 2, 1), (2, 4, 1)]), (4, [(1, 4, 1)])]
  for devices, meshes in runs:
    out = run_python(_DIGESTS.format(meshes=meshes, workdir=workdir), devices=devices)
    for line in out.splitlines():
      record = json.loads(line)
      assert record["digests"] == want, record["mesh"]
      assert max(record["devices"]) == devices, record["mesh"]


def _state_digests(config, workdir):
  mesh = sharding.make_mesh(config_lib.resolve_mesh(config, 1).mesh)
  return [
      hashlib.sha256(jax.device_get(x).tobytes()).hexdigest()
      for x in jax.tree.leaves(_restore(config_lib.resolve_mesh(config, 1), workdir, mesh)[0])
  ]


def _last_logged_step(workdir, stale_inode):
  """The newest step in metrics.jsonl, 0 while the file is missing or is still the one a
  killed run left (a resumed run replaces it when it drops the records past its checkpoint);
  a line still being written is ignored."""
  try:
    if os.stat(os.path.join(workdir, "metrics.jsonl")).st_ino == stale_inode:
      return 0
    records = read_records(workdir)
  except FileNotFoundError:
    return 0
  return records[-1]["step"] if records else 0


def _kill_soak(workdir, steps, kills, seed):
  """Trains `steps` steps saving after every step, SIGKILLed `kills` times, restarted each
  time; returns the logged step each kill landed after. Each kill waits for a random step past
  the newest complete checkpoint (1 to 3 steps on), then a random delay up to 0.2 s, so some
  land inside the asynchronous save of that step."""
  rng = random.Random(seed)
  landed = []
  cmd = main_command(workdir, **{"train.steps": steps, "checkpoint.every_steps": 1})
  while True:
    metrics = os.path.join(workdir, "metrics.jsonl")
    stale = os.stat(metrics).st_ino if os.path.exists(metrics) else None
    saved = max((int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()),
                default=0) if os.path.isdir(os.path.join(workdir, "checkpoints")) else 0
    proc = subprocess.Popen(cmd,
                            cwd=REPO,
                            env=subprocess_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            text=True)
    if len(landed) < kills and saved < steps - 1:
      target = min(saved + rng.randint(1, 3), steps - 1)
      while proc.poll() is None and _last_logged_step(workdir, stale) < target:
        time.sleep(0.01)
      time.sleep(rng.uniform(0, 0.2))
      if proc.poll() is None:
        proc.kill()
        landed.append(_last_logged_step(workdir, stale))
    _, stderr = proc.communicate(timeout=300)
    if proc.returncode == 0:
      return landed
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]


def test_random_sigkills_resume_bit_identically(straight_run, tmp_path):
  """RELIABILITY.md item 1: every restart resumes from a complete checkpoint, no temporary
  directory is left, and every logged loss and the final state equal the uninterrupted run's."""
  reference, config = straight_run
  landed = _kill_soak(str(tmp_path), STEPS, kills=2, seed=0)
  assert len(landed) == 2, landed
  _assert_same_run(config, str(tmp_path), reference)


@pytest.mark.slow
def test_twenty_random_sigkills_resume_bit_identically(tmp_path):
  """The full soak of RELIABILITY.md item 1: 20 kills over 40 steps."""
  config = make_config(**{"train.steps": 40})
  loop.train(config, str(tmp_path / "reference"))
  landed = _kill_soak(str(tmp_path / "killed"), 40, kills=20, seed=20)
  print("kills landed after steps", landed)
  assert len(landed) == 20, landed
  _assert_same_run(config, str(tmp_path / "killed"), str(tmp_path / "reference"))


def _assert_same_run(config, workdir, reference):
  assert losses(workdir) == losses(reference)
  assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if not d.isdigit()]
  assert _state_digests(config, workdir) == _state_digests(config, reference)


def test_nan_policy_stop_reads_the_flags_at_the_next_log_step(tmp_path):
  """No flag is read per step: a bad step between log and checkpoint steps is found at the next
  one, named exactly, and nothing of a later step is written (no metrics, no checkpoint)."""
  result = run_main(str(tmp_path),
                    env={faults.ENV: "nan_at_step=3"},
                    **NO_REFLECT,
                    **{
                        "train.steps": 8,
                        "train.log_every_steps": 4,
                        "checkpoint.every_steps": 2
                    })
  assert result.returncode == 3, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: non-finite loss or gradients at step 3 (train.nan_policy=stop)")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert not os.path.exists(tmp_path / "metrics.jsonl") or not read_records(str(tmp_path))


def test_a_profile_of_chosen_steps_is_written(tmp_path):
  result = run_main(str(tmp_path), **NO_REFLECT, **{"train.steps": 3, "train.profile_steps": "2,3"})
  assert result.returncode == 0, result.stderr[-2000:]
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  bad = run_main(str(tmp_path / "bad"), **NO_REFLECT, **{"train.profile_steps": "3,2"})
  assert bad.returncode == 2
  assert "config.train.profile_steps='3,2': expected 1 <= FIRST <= LAST" in bad.stderr


def test_grain_workers_resume_bit_identically(tmp_path):
  """With data.num_workers > 0 (grain worker processes read ahead, as the scaled configs run), a
  trainer killed after a step resumes its data where the checkpoint left it: the losses and the
  parameters equal an uninterrupted run's with the same workers."""
  overrides = {**PLAIN, "data.num_workers": 2}
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  assert run_main(straight, **overrides).returncode == 0
  crashed = run_main(resumed, env={faults.ENV: "crash_after_step=4"}, **overrides)
  assert crashed.returncode == faults.CRASH_EXIT_CODE, crashed.stderr[-2000:]
  result = run_main(resumed, **overrides)
  assert result.returncode == 0, result.stderr[-2000:]
  assert losses(resumed) == losses(straight) and sorted(losses(straight)) == list(
      range(1, STEPS + 1))
  config = make_config(**overrides)
  assert params_hash(resumed, config) == params_hash(straight, config)
