"""End-to-end training: falling loss, bit-identical resume (also after SIGTERM), sharding."""

import os
import random
import signal
import struct
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import (
    QA,
    REPO,
    STEPS,
    assert_resume_is_bit_identical,
    assert_same_losses,
    assert_same_run,
    logged_steps,
    losses,
    main_command,
    make_config,
    restored_params,
    run_main,
    subprocess_env,
    train_on_mesh,
)
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.data.packing import PackedRows
from rasr_jax.training import checkpoint, loop, train_state
from rasr_jax.training.metrics import MetricWriter, read_records


def test_loss_falls(straight_run):
  workdir, _ = straight_run
  by_step = losses(workdir)
  assert sorted(by_step) == list(range(1, STEPS + 1))
  assert by_step[STEPS] < by_step[1] - 0.5


RASR_KEYS = [
    "loss/reflect", "loss/critic", "loss/controller", "reflect/mean_iterations", "reflect/tau",
    "grad_norm/generator", "grad_norm/critic", "grad_norm/controller", "critic/calibration_error"
]


def _tensorboard_tags(logdir):
  """Scalar tags in the tensorboardX event files under `logdir`."""
  from tensorboardX.proto import event_pb2
  tags = set()
  for name in os.listdir(logdir):
    with open(os.path.join(logdir, name), "rb") as f:
      while header := f.read(12):
        data = f.read(struct.unpack("<Q", header[:8])[0])
        f.read(4)
        tags.update(v.tag for v in event_pb2.Event.FromString(data).summary.value)
  return tags


def _tensorboard_steps(logdir, tag):
  """The steps of `tag` TensorBoard shows: files in the order written, and a session START at
  step s (a resume's purge_step) drops the events at steps >= s written before it."""
  from tensorboardX.proto import event_pb2
  steps = []
  for name in sorted(os.listdir(logdir), key=lambda n: os.path.getmtime(os.path.join(logdir, n))):
    with open(os.path.join(logdir, name), "rb") as f:
      while header := f.read(12):
        event = event_pb2.Event.FromString(f.read(struct.unpack("<Q", header[:8])[0]))
        f.read(4)
        if event.session_log.status == event_pb2.SessionLog.START:
          steps = [s for s in steps if s < event.step]
        steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


def test_a_resumed_writer_drops_the_replayed_steps(tmp_path):
  """Steps 1-4 written, the run resumes from step 2: metrics.jsonl and TensorBoard each hold
  steps 1-4 once (without purge_step TensorBoard showed 3 and 4 twice)."""
  first = MetricWriter(str(tmp_path))
  for step in range(1, 5):
    first.write(step, {"loss": float(step)})
  first.close()
  time.sleep(1.1)  # event files are named by the second they start in
  resumed = MetricWriter(str(tmp_path), start_step=2)
  for step in range(3, 5):
    resumed.write(step, {"loss": 10.0 + step})
  resumed.close()
  assert [(r["step"], r["loss"]) for r in read_records(str(tmp_path))] == [(1, 1.0), (2, 2.0),
                                                                           (3, 13.0), (4, 14.0)]
  assert _tensorboard_steps(str(tmp_path / "tensorboard"), "loss") == [1, 2, 3, 4]


def test_wandb_gets_every_record_in_the_work_directorys_run(tmp_path, monkeypatch):
  """metrics.wandb_project logs each record at its step to one run per work directory (a fake
  wandb module stands in: the package is optional and never needed for a test)."""
  import sys
  import types
  calls = []
  fake = types.ModuleType("wandb")

  class Run:

    def log(self, data, step):
      calls.append(("log", step, data))

    def finish(self):
      calls.append(("finish",))

  fake.init = lambda **kwargs: calls.append(("init", kwargs)) or Run()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  for _ in range(2):  # a second writer (a resume) names the same run
    writer = MetricWriter(str(tmp_path), wandb_project="p", run_config={"seed": 0})
    writer.write(3, {"loss": 2.0})
    writer.close()
  inits = [c[1] for c in calls if c[0] == "init"]
  assert inits[0] == inits[1] and inits[0]["project"] == "p" and inits[0]["resume"] == "allow"
  assert [c for c in calls if c[0] == "log"] == [("log", 3, {"loss": 2.0})] * 2
  assert calls[-1] == ("finish",)


def test_metrics_keys(straight_run):
  workdir, config = straight_run
  records = read_records(workdir)
  k = config.reflect.iterations
  per_k = ([f"loss/reflect_k{i}" for i in range(k)] + [f"reflect/stop_rate_k{i}" for i in range(k)]
           + [f"quality/q_k{i}" for i in range(k + 1)])
  for key in ["step", "loss", "loss/lm", "lr", "grad_norm", "tokens_per_sec", "step_time_s", "mfu"
             ] + RASR_KEYS + per_k:
    assert key in records[0], key
  # The last step also reports the held-out evaluation, e.g. Q(y(0)) and Q(y(R)).
  assert {"eval/quality/q_k0", f"eval/quality/q_k{k}", "eval/loss/lm"} <= set(records[-1])
  assert "eval/loss/lm" not in records[0]
  tags = _tensorboard_tags(os.path.join(workdir, "tensorboard"))
  assert {"loss/lm", "loss/reflect", "reflect/tau", f"eval/quality/q_k{k}"} <= tags


def test_resume_is_bit_identical(straight_run, tmp_path):
  reference, config = straight_run
  assert_resume_is_bit_identical(config, reference, str(tmp_path))


def test_sigterm_saves_and_resumes_bit_identically(straight_run, tmp_path):
  reference, config = straight_run
  workdir = str(tmp_path)
  cmd = main_command(workdir, **{"train.steps": STEPS})
  proc = subprocess.Popen(cmd,
                          cwd=REPO,
                          env=subprocess_env(),
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE,
                          text=True)
  target = random.Random(time.time()).randint(1, STEPS - 3)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if logged_steps(workdir) >= target:
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
  assert_same_run(config, workdir, reference)


def test_sharded_training_equals_single_device(straight_run, tmp_path):
  """The trainer on a (data=2, fsdp=2, tensor=2) mesh of 8 fake devices matches 1 device.

  With RASR on (the tiny default), so the whole reflection step is checked sharded.
  """
  reference, config = straight_run
  assert config.reflect.enabled
  workdir = str(tmp_path)
  train_on_mesh(workdir, (2, 2, 2), **{"train.steps": STEPS})
  assert_same_losses(workdir, reference)
  # Relative to each tensor's norm: Adam turns a 1e-10 gradient difference on a near-zero
  # gradient entry (an embedding row of a token that barely occurs) into an update difference
  # of up to lr * 1e-2 a step; measured: one such row of the embedding moves by 1e-4 over 8
  # steps (2.7e-5 of the tensor's norm), every other entry by under 6e-7.
  for x, y in zip(restored_params(workdir, config), restored_params(reference, config)):
    assert np.linalg.norm(x - y) <= 5e-5 * np.linalg.norm(y)


# Every layout of 8 devices as (data, fsdp, tensor) that the SMALL shapes allow (tensor divides
# the 2 kv heads).
MESHES_OF_8 = ((8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1), (4, 1, 2), (2, 2, 2), (1, 4, 2))


# Slow (14 runs, about 50 s each here): the default suite runs (2, 2, 2) with the fewest rows in
# test_sharded_training_equals_single_device (teacher-forced text windows) and in
# test_qa.py's test_question_answer_rows_on_a_mesh_of_8_equal_one_device (free-running drafts).
@pytest.mark.slow
@pytest.mark.parametrize("mesh, draft_mode", [
    pytest.param(mesh, mode, id=f"{'x'.join(map(str, mesh))}-{mode}")
    for mesh in MESHES_OF_8
    for mode in ("teacher_forced", "autoregressive")
])
def test_rasr_with_the_fewest_rows_on_a_mesh_of_8_equals_one_device(mesh, draft_mode, tmp_path):
  """R = 3 with one reflection row per data-parallel shard (the fewest validation accepts), on
  8 fake devices through the CLI, against one device in this process: the same losses."""
  data, fsdp, _ = mesh
  overrides = {
      **(QA if draft_mode == "autoregressive" else {}),  # free-running: question/answer rows
      "train.steps":
          4,
      "reflect.iterations":
          3,
      "reflect.draft_mode":
          draft_mode,
      "reflect.rows":
          data * fsdp
  }
  reference = str(tmp_path / "one_device")
  loop.train(make_config(**overrides), reference)
  sharded = str(tmp_path / "sharded")
  train_on_mesh(sharded, mesh, **overrides)
  assert sorted(losses(reference)) == [1, 2, 3, 4]
  assert_same_losses(sharded, reference)


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


def test_gradient_accumulation_equals_one_batch():
  """Two micro-batches inside the step give the update of one whole batch."""
  from rasr_jax.training import optim
  from rasr_jax.training import step as train_step
  results = []
  for accum in (1, 2):
    config = config_lib.resolve_mesh(
        make_config(**{
            "train.grad_accum_steps": accum,
            "reflect.enabled": False
        }), 1)
    mesh = sharding.make_mesh(config.mesh)
    state, _ = train_state.init_state(config, mesh)
    graphdef, _, _ = train_state.abstract_model(config)
    tx = optim.make_optimizer(config.train, state.params)
    tokens = np.random.RandomState(0).randint(0, 500, (8, 33)).astype(np.int32)
    step = jax.jit(train_step.make_train_step(graphdef, config, tx))
    with sharding.activate(mesh):
      for _ in range(2):  # the first update has learning rate 0 (warm-up starts at 0)
        state, metrics = step(state, PackedRows(tokens), None)
    results.append((metrics, jax.tree.leaves(state.params)))
  (m1, p1), (m2, p2) = results
  assert float(m2["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
  assert float(m2["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
  for a, b in zip(p1, p2):
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)
