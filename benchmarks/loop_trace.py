"""What a `train.profile_steps` trace shows: how busy the device was while the loop ran.

  PYTHONPATH=. python benchmarks/loop_trace.py --workdir=/tmp/loop_trace \
      [--config=configs/tiny.py] [--steps=40] [--profile=21,40] [--set=FIELD=VALUE ...]

Trains the config for --steps steps with `train.profile_steps` set to --profile, then reads the
trace (jax.profiler's XSpace file) and prints one JSON object: the traced window (first to last
execution), the time the device ran the step programs in it (the union of their executed
intervals: on a GPU or TPU the device planes' "XLA Modules" line, or every line of a plane
without one; on CPU the XLA thread pool's executions, since that pool is the device), the busy
fraction (1.0: the host never kept the device waiting), the host's longest gap between two
executions, and how long exactly 0, 1, 2, ... of the device's executors were busy
(`busy_executors_s`; on CPU each XLA thread is one: time with fewer busy than the machine has
cores is compute the program left unused).
"""

import glob
import json
import os
import sys

from absl import app, flags
from jax.profiler import ProfileData

from common import load_config
from rasr_jax.training import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of the run.", required=True)
_CONFIG = flags.DEFINE_string("config", "configs/tiny.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 40, "Training steps.")
_PROFILE = flags.DEFINE_string("profile", "21,40", "FIRST,LAST steps to trace.")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE config overrides.")

EXECUTE = "ThunkExecutor::Execute"  # one program (or part of one) running on an XLA CPU thread
MODULES = "XLA Modules"  # an accelerator plane's line of whole-program executions


def _spans(events):
  return [(e.start_ns, e.start_ns + e.duration_ns) for e in events]


def executions(planes):
  """{executor: [(start_ns, end_ns)]}: the program executions of each device executor in a
  trace's `planes` (as jax.profiler.ProfileData reads them). An executor is an accelerator
  plane's "XLA Modules" line (else each of its lines) where the trace has accelerators, else an
  XLA CPU thread."""
  planes = list(planes)  # ProfileData gives an iterator: read twice below
  accelerators = [p for p in planes if p.name.startswith("/device:") and "CPU" not in p.name]
  out = {}
  for plane in accelerators:
    lines = list(plane.lines)
    modules = [line for line in lines if line.name == MODULES]
    for line in modules or lines:  # without a modules line, every stream's kernels
      out[f"{plane.name} {line.name}"] = _spans(line.events)
  if not accelerators:
    for plane in planes:
      for line in plane.lines:
        if plane.name == "/host:CPU" and not line.name.startswith("tf_XLA"):
          continue  # host threads (Python, the data pipeline)
        spans = _spans(e for e in line.events if e.name == EXECUTE)
        if spans:
          out[f"{plane.name} {line.name}"] = spans
  return out


def union(intervals):
  """Merged, disjoint intervals of `intervals`."""
  merged = []
  for start, end in sorted(intervals):
    if merged and start <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  return merged


def busy_executors(executed):
  """{n: ns} for n = 0 .. len(executed): how long exactly n executors were busy between the first
  execution's start and the last one's end (on CPU: how many of XLA's threads worked)."""
  edges = sorted((t, step)
                 for spans in executed.values()
                 for start, end in union(spans)
                 for t, step in ((start, 1), (end, -1)))
  out = dict.fromkeys(range(len(executed) + 1), 0)
  busy = 0
  for (t, step), (after, _) in zip(edges, edges[1:]):
    busy += step
    out[busy] += after - t
  return out


def main(argv):
  del argv
  settings = [f"train.steps={_STEPS.value}", f"train.profile_steps={_PROFILE.value}", *_SET.value]
  config = load_config(_CONFIG.value, settings)
  loop.train(config, _WORKDIR.value)
  traces = sorted(
      glob.glob(os.path.join(_WORKDIR.value, "profile", "**", "*.xplane.pb"), recursive=True))
  if not traces:  # the run stopped (or had stopped, in a resumed workdir) before the traced steps
    print(
        f"error: no trace under {_WORKDIR.value}/profile: the run did not reach steps "
        f"{_PROFILE.value}",
        file=sys.stderr)
    sys.exit(2)
  executed = executions(ProfileData.from_file(traces[-1]).planes)
  busy = union(span for spans in executed.values() for span in spans)
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
              "executors": sorted(executed),
              "busy_executors_s": {
                  n: ns / 1e9 for n, ns in busy_executors(executed).items()
              },
              "trace": traces[-1],
              "config": _CONFIG.value,
              "settings": settings,
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
