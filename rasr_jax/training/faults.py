"""Fault injection for the reliability tests, read from the RASR_FAULTS environment variable.

  RASR_FAULTS="nan_at_step=3,crash_in_save=5:commit"

- nan_at_step=N: the update that produces step N sees NaN loss and gradients (through the
  step's gradient hook).
- crash_after_step=N: the process dies right after step N's update, metrics and checkpoint
  request, when step N + 1's batch is read: only when this process ran step N and goes on
  (N < train.steps, no stop at N).
- crash_in_data_read=N: the process dies inside the read of step N's batch (the data iterator
  has advanced, the batch has not reached the step).
- crash_in_save=N:PHASE: the process dies in a named phase of step N's checkpoint save:
    request  every earlier save complete, orbax not yet handed step N's state;
    commit   in orbax's background thread once every file of step N is written to its
             temporary directory, before the rename that publishes it (needs async saves);
    done     after step N's checkpoint is complete and listed.
- stop_after_save=N: once step N's checkpoint is complete and listed, the process stops itself
  (SIGSTOP) until a SIGCONT: a test can change the world at a known point of the run.

Every crash is os._exit: no cleanup, no flush, as abrupt as SIGKILL. The faults reach the run
from outside: the data iterator and the checkpointer are wrapped (`instrument_*`), the step gets
a gradient hook and the checkpointer a commit hook; unset, nothing is wrapped or compiled in.
"""

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp

ENV = "RASR_FAULTS"
CRASH_EXIT_CODE = 86
SAVE_PHASES = ("request", "commit", "done")


@dataclasses.dataclass(frozen=True)
class Faults:
  nan_at_step: int | None = None
  crash_after_step: int | None = None
  crash_in_data_read: int | None = None
  crash_in_save: tuple[int, str] | None = None  # (step, one of SAVE_PHASES)
  stop_after_save: int | None = None

  @property
  def crashes_at_commit(self) -> bool:
    return self.crash_in_save is not None and self.crash_in_save[1] == "commit"


NO_FAULTS = Faults()
_NAMES = tuple(f.name for f in dataclasses.fields(Faults))


def _parse(name, value):
  """One RASR_FAULTS entry's value, or None when it cannot be read."""
  if name == "crash_in_save":
    step, _, phase = value.partition(":")
    return (int(step), phase) if step.isdigit() and phase in SAVE_PHASES else None
  return int(value) if value.isdigit() else None


def from_env(env=os.environ) -> Faults:
  """The faults named in RASR_FAULTS (empty: none); a malformed value raises ValueError."""
  text = env.get(ENV, "").strip()
  if not text:
    return Faults()
  values = {}
  for item in text.split(","):
    name, _, value = (part.strip() for part in item.partition("="))
    parsed = _parse(name, value) if name in _NAMES else None
    if parsed is None:
      raise ValueError(f"{ENV}: cannot read {item!r} (expected name=step, or crash_in_save="
                       f"step:phase with phase in {', '.join(SAVE_PHASES)}; names: "
                       f"{', '.join(_NAMES)})")
    values[name] = parsed
  return Faults(**values)


def crash_now():
  os._exit(CRASH_EXIT_CODE)  # no cleanup, no flush: as abrupt as SIGKILL


def grad_hook(faults: Faults):
  """The train step's gradient hook for `nan_at_step` (None without it): the loss and gradients
  of the update that makes that step become NaN; the step's own rule must drop the update."""
  if faults.nan_at_step is None:
    return None

  def poison(step, loss, grads):
    factor = jnp.where(step == faults.nan_at_step, jnp.nan, 1.0)
    return loss * factor, jax.tree.map(lambda g: g * factor, grads)

  return poison


class _CrashingData:
  """A data iterator that dies when step `crash_in_data_read`'s batch, or the batch after
  step `crash_after_step` (run by this process), has been read; its state is the wrapped
  iterator's."""

  def __init__(self, iterator, faults: Faults, next_step: int):
    self._iterator, self._faults = iterator, faults
    self._first_step = self._next_step = next_step

  def __iter__(self):
    return self

  def __next__(self):
    batch, step = next(self._iterator), self._next_step
    self._next_step += 1
    after = self._faults.crash_after_step
    if step == self._faults.crash_in_data_read or (after is not None and step == after + 1
                                                   and after >= self._first_step):
      crash_now()
    return batch

  def __getattr__(self, name):  # get_state / set_state for the checkpointer
    return getattr(self._iterator, name)


def instrument_data(iterator, faults: Faults, next_step: int):
  """The data iterator, dying as `faults` say; `next_step` is the step of its next batch."""
  if faults.crash_in_data_read is None and faults.crash_after_step is None:
    return iterator
  return _CrashingData(iterator, faults, next_step)


class _FaultyCheckpointer:
  """A Checkpointer that dies in the `request` or `done` phase of one save, or stops after one
  save, once every save so far is complete."""

  def __init__(self, checkpointer, faults: Faults):
    self._checkpointer, self._faults = checkpointer, faults

  def _at(self, step, phase):
    crash = self._faults.crash_in_save == (step, phase)
    pause = phase == "done" and step == self._faults.stop_after_save
    if crash or pause:
      self._checkpointer.wait()
    if crash:
      crash_now()
    if pause:
      os.kill(os.getpid(), signal.SIGSTOP)

  def save(self, step, *args, **kwargs):
    self._at(step, "request")
    self._checkpointer.save(step, *args, **kwargs)
    self._at(step, "done")

  def __getattr__(self, name):
    return getattr(self._checkpointer, name)


def on_commit(faults: Faults):
  """The Checkpointer's commit hook for `crash_in_save=N:commit` (None without it): called in
  orbax's background thread with the step whose files are written and not yet renamed."""
  if not faults.crashes_at_commit:
    return None
  return lambda step: crash_now() if step == faults.crash_in_save[0] else None


def instrument_checkpointer(checkpointer, faults: Faults):
  """The checkpointer, dying in the `request` or `done` phase, or stopping after the save, that
  `faults` name."""
  in_phase = faults.crash_in_save is not None and not faults.crashes_at_commit
  if not in_phase and faults.stop_after_save is None:
    return checkpointer
  return _FaultyCheckpointer(checkpointer, faults)
