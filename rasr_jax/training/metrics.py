"""Metric records: tensorboardX, WORKDIR/metrics.jsonl (the machine-readable record) and,
optionally, Weights & Biases."""

import hashlib
import json
import os

from etils import epath

from rasr_jax import storage


class MetricWriter:
  """Writes one record per logged step to tensorboard and to metrics.jsonl (process 0 only).

  A run resumed at `start_step` first drops the records beyond it (written before a crash, then
  lost with the state) from both, so replayed steps are not shown twice. Both may live on an
  object store (storage.GrowingFile).
  """

  def __init__(self, workdir, enabled=True, start_step=0, wandb_project="", run_config=None):
    """`wandb_project` (metrics.wandb_project): also log to that Weights & Biases project, in the
    run named by the work directory (a resume continues it); `run_config`: its config dict."""
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = self._wandb = self._file = None
    if enabled:  # imported here: tensorboardX loads torch when installed (2 s of start-up)
      from tensorboardX import SummaryWriter
      storage.register_tensorboard_writers()
      self._file = storage.GrowingFile(self.path, self._kept(start_step))
      # steps after the restored one (all of them for a run restarted before its first
      # checkpoint) are hidden from the earlier attempt's event files
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"),
                               purge_step=start_step + 1)
    if enabled and wandb_project:
      import wandb
      run_id = hashlib.sha256(storage.absolute(workdir).encode()).hexdigest()[:16]
      self._wandb = wandb.init(project=wandb_project,
                               id=run_id,
                               resume="allow",
                               dir=None if storage.is_remote(workdir) else workdir,
                               config=run_config)

  def _kept(self, step) -> bytes:
    """The existing metrics.jsonl's records up to `step` (less a last line torn by a kill)."""
    if not epath.Path(self.path).exists():
      return b""
    kept = [line for line in _complete_lines(self.path) if json.loads(line)["step"] <= step]
    return "".join(kept).encode()

  def write(self, step, record):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in record.items()}}
    self._file.write((json.dumps(record) + "\n").encode())
    self._file.flush()
    for key, value in record.items():
      if key != "step":
        self._tb.add_scalar(key, value, global_step=step)
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=int(step))

  def close(self):
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def _complete_lines(path):
  """The non-empty lines of a metrics file, less a last line torn by a kill (no newline)."""
  *complete, _ = epath.Path(path).read_text().split("\n")  # the last part: "" or a torn line
  return [line + "\n" for line in complete if line.strip()]


def read_records(workdir):
  """The records of WORKDIR/metrics.jsonl, in order (a line torn by a kill is left out)."""
  return [json.loads(line) for line in _complete_lines(os.path.join(workdir, "metrics.jsonl"))]
