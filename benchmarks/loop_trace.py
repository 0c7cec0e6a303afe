"""What a `train.profile_steps` trace shows: how busy the device was while the loop ran.

  PYTHONPATH=. python benchmarks/loop_trace.py --workdir=/tmp/loop_trace \
      [--config=configs/tiny.py] [--steps=40] [--profile=21,40] [--set=FIELD=VALUE ...]

Trains the config for --steps steps with `train.profile_steps` set to --profile, then reads the
trace (jax.profiler's XSpace file) and prints one JSON object: the traced window (first to last
event of the XLA runtime), the time the device's executor threads ran the step programs in it
(the union of their executed intervals; on CPU the XLA thread pool is the device), the busy
fraction (1.0: the host never kept the device waiting), and the host's longest gap between two
executions.
"""

import glob
import json
import os

from absl import app, flags
from jax.profiler import ProfileData

from common import load_config
from rasr_jax.training import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of the run.", required=True)
_CONFIG = flags.DEFINE_string("config", "configs/tiny.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 40, "Training steps.")
_PROFILE = flags.DEFINE_string("profile", "21,40", "FIRST,LAST steps to trace.")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE config overrides.")

EXECUTE = "ThunkExecutor::Execute"  # one program (or part of one) running on an XLA thread


def executed_intervals(path):
  """[(start_ns, end_ns)] of every program execution on the device's threads in the trace."""
  out = []
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      if plane.name == "/host:CPU" and not line.name.startswith("tf_XLA"):
        continue  # host threads (Python, the data pipeline)
      out += [(e.start_ns, e.start_ns + e.duration_ns) for e in line.events if e.name == EXECUTE]
  return sorted(out)


def union(intervals):
  """Merged, disjoint intervals of sorted `intervals`."""
  merged = []
  for start, end in intervals:
    if merged and start <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  return merged


def main(argv):
  del argv
  settings = [f"train.steps={_STEPS.value}", f"train.profile_steps={_PROFILE.value}", *_SET.value]
  config = load_config(_CONFIG.value, settings)
  loop.train(config, _WORKDIR.value)
  path = sorted(
      glob.glob(os.path.join(_WORKDIR.value, "profile", "**", "*.xplane.pb"), recursive=True))[-1]
  busy = union(executed_intervals(path))
  window = busy[-1][1] - busy[0][0]
  gaps = [b[0] - a[1] for a, b in zip(busy, busy[1:])]
  print(
      json.dumps(
          {
              "benchmark": "loop_trace",
              "traced_steps": _PROFILE.value,
              "window_s": window / 1e9,
              "device_busy_s": sum(end - start for start, end in busy) / 1e9,
              "device_busy_fraction": sum(end - start for start, end in busy) / window,
              "longest_idle_gap_s": max(gaps, default=0) / 1e9,
              "trace": path,
              "config": _CONFIG.value,
              "settings": settings,
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
