"""Fault injection for the reliability tests, read from the RASR_FAULTS environment variable.

  RASR_FAULTS="nan_at_step=3,crash_after_step=5"

- nan_at_step=N: the update that produces step N sees NaN loss and gradients (compiled into the
  step only when set).
- crash_after_step=N: the process dies (os._exit, like SIGKILL: no cleanup) right after step
  N's update and its checkpoint request.

Unset, nothing is compiled in and nothing is checked.
"""

import dataclasses
import os

ENV = "RASR_FAULTS"
CRASH_EXIT_CODE = 86


@dataclasses.dataclass(frozen=True)
class Faults:
  nan_at_step: int | None = None
  crash_after_step: int | None = None


def from_env(env=os.environ) -> Faults:
  """The faults named in RASR_FAULTS (empty: none); a malformed value raises ValueError."""
  text = env.get(ENV, "").strip()
  if not text:
    return Faults()
  values = {}
  for item in text.split(","):
    name, _, number = item.partition("=")
    if name.strip() not in {f.name for f in dataclasses.fields(Faults)} or not number.isdigit():
      raise ValueError(f"{ENV}: cannot read {item!r} (expected name=step, names: "
                       f"{', '.join(f.name for f in dataclasses.fields(Faults))})")
    values[name.strip()] = int(number)
  return Faults(**values)


def crash_now():
  os._exit(CRASH_EXIT_CODE)  # no cleanup, no flush: as abrupt as SIGKILL
