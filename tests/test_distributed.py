"""Scale-out on one machine: 2 processes x 4 CPU devices (also preempted on one process), and
the ahead-of-time compile check."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import REPO, logged_steps, losses, main_command, on_fake_gcs, run_main, subprocess_env

STEPS = 8
# A (data=2, fsdp=4) mesh over 8 devices; 2 data streams, so the batches do not depend on the
# process count. The standard step (reflection off) keeps the compile of 2 processes on 2
# cores short; the RASR step on 8 devices is checked in test_train.py.
MESH = {
    "train.steps": STEPS,
    "checkpoint.every_steps": 2,
    "mesh.data": 2,
    "mesh.fsdp": 4,
    "data.streams": 2,
    "reflect.enabled": False,
    "reflect.iterations": 0
}
# The compile check keeps RASR on, with the mesh and steps of test_train's sharded run (the
# same program, so one of the two finds it in the compilation cache).
RASR_MESH = {"train.steps": 8, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_processes(workdir,
                     num_processes,
                     devices_each,
                     *extra,
                     buckets=None,
                     each=None,
                     **overrides):
  """The trainer (`extra` flags) as `num_processes` processes joined through a coordinator on
  127.0.0.1 (with gs:// served from the folder `buckets` when given); process i gets
  `overrides` and `each[i]`."""
  port = _free_port()
  address = f"127.0.0.1:{port}"
  argv = lambda i: main_command(
      workdir, f"--coordinator_address={address}", f"--coordinator_bind_address={address}",
      f"--num_processes={num_processes}", f"--process_id={i}", *extra, **overrides,
      **(each[i] if each else {}))
  return [
      subprocess.Popen(on_fake_gcs(buckets, argv(i)) if buckets else argv(i),
                       cwd=REPO,
                       env=subprocess_env(devices_each),
                       stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE,
                       text=True) for i in range(num_processes)
  ]


def _finish(procs):
  """Every process's (stdout, stderr), once all have exited with code 0."""
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs


def test_two_processes_train_preempt_and_resume_like_one(tmp_path):
  """2 processes x 4 devices (the data axis split over the processes as DCN granules) train the
  tiny config with the work directory in a bucket (gs://, tests/fake_gcs.py); SIGTERM reaches
  process 1 only, and both processes save one checkpoint at the same step and exit 0; the
  resumed run has the losses of a local 1-process 8-device run."""
  reference = str(tmp_path / "one_process")
  result = run_main(reference, devices=8, **MESH)
  assert result.returncode == 0, result.stderr[-3000:]
  buckets = str(tmp_path / "buckets")
  workdir = os.path.join(buckets, "bucket", "two_processes")  # gs://bucket/two_processes
  start = lambda: _start_processes(
      "gs://bucket/two_processes", 2, 4, buckets=buckets, **MESH, **{"mesh.dcn_data": 2})
  procs = start()
  deadline = time.time() + 300
  while logged_steps(workdir) < 1 and procs[1].poll() is None and time.time() < deadline:
    time.sleep(0.01)
  procs[1].send_signal(signal.SIGTERM)
  stopped = [
      set(re.findall(r"stopping at step (\d+) \(SIGTERM\)", err)) for _, err in _finish(procs)
  ]
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1, stopped
  step = int(stopped[0].pop())
  assert step < STEPS and max(losses(workdir)) == step
  saved = os.path.join(workdir, "checkpoints", str(step))
  assert max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == step
  assert os.path.isfile(os.path.join(saved, "commit_success.txt"))  # one checkpoint, both parts:
  assert sorted(os.listdir(os.path.join(
      saved, "data"))) == ["commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  _finish(start())
  want, got = losses(reference), losses(workdir)
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-5)


def test_compile_mode_reports_per_device_memory(tmp_path):
  """--mode=compile builds the sharded RASR step from abstract inputs; the state it takes per
  device is describe's estimate (plus the batch), and the step needs more than its inputs."""
  result = run_main(str(tmp_path), "--mode=compile", devices=8, **RASR_MESH)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  used, estimate = report["bytes_per_device"], report["describe_bytes_per_device"]
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and report["reflect"]
  assert 0 <= used["arguments"] - estimate["total"] < 0.01 * estimate["total"] + 4096
  assert used["total"] > used["arguments"] and used["temporaries"] > 0
  assert not os.listdir(tmp_path)  # nothing written


def test_processes_fit_memory_with_process_zeros_limit(tmp_path):
  """grad_accum_steps=auto on 2 processes x 2 devices: each process's own limit differs (process
  1's alone would fit nothing), yet both search with process 0's and choose alike."""
  procs = _start_processes(str(tmp_path),
                           2,
                           2,
                           "--mode=compile",
                           each=[{
                               "train.memory_limit_gib": limit
                           } for limit in (1000.0, 1e-4)],
                           **{"train.grad_accum_steps": "auto"})
  reports = [json.loads(out[out.index("{"):]) for out, _ in _finish(procs)]
  assert [r["memory_fit"]["limit_gib"] for r in reports] == [1000.0, 1000.0]
  assert [r["grad_accum_steps"] for r in reports] == [1, 1]
