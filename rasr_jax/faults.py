"""Fault injection for the reliability tests, read from the RASR_FAULTS environment variable.

  RASR_FAULTS="nan_at_step=3,crash_in_save=5:commit"

- nan_at_step=N: the update that produces step N sees NaN loss and gradients (compiled into the
  step only when set).
- crash_after_step=N: the process dies right after step N's update and its checkpoint request.
- crash_in_data_read=N: the process dies inside the read of step N's batch (the data iterator
  has advanced, the batch has not reached the step).
- crash_in_save=N:PHASE: the process dies in a named phase of step N's checkpoint save:
    request  every earlier save complete, orbax not yet handed step N's state;
    commit   in orbax's background thread once every file of step N is written to its
             temporary directory, before the rename that publishes it (needs async saves);
    done     after step N's checkpoint is complete and listed.

Every crash is os._exit: no cleanup, no flush, as abrupt as SIGKILL. Unset, nothing is compiled
in and nothing is checked.
"""

import dataclasses
import os

ENV = "RASR_FAULTS"
CRASH_EXIT_CODE = 86
SAVE_PHASES = ("request", "commit", "done")


@dataclasses.dataclass(frozen=True)
class Faults:
  nan_at_step: int | None = None
  crash_after_step: int | None = None
  crash_in_data_read: int | None = None
  crash_in_save: tuple[int, str] | None = None  # (step, one of SAVE_PHASES)

  @property
  def crashes_at_commit(self) -> bool:
    return self.crash_in_save is not None and self.crash_in_save[1] == "commit"


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
