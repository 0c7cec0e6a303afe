"""Timing shared by the benchmark scripts (no flags here)."""

import statistics
import time

import jax


def time_steps(step_fn, state, batch, steps):
  """Median seconds per call of `step_fn(state, batch)` over `steps` calls after two warm-ups."""
  for _ in range(2):
    state, out = step_fn(state, batch)
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, out = step_fn(state, batch)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return statistics.median(times), state


def interleaved_medians(runs, batch, rounds):
  """{name: median seconds per step}, timing one step of each run in turn, `rounds` times.

  `runs` maps a name to (step_fn, state). Interleaving keeps slow drifts of the machine out of
  the ratios between runs. Each run takes two warm-up steps first.
  """
  states = {}
  for name, (step_fn, state) in runs.items():
    for _ in range(2):
      state, out = step_fn(state, batch)
    jax.block_until_ready(out)
    states[name] = state
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, (step_fn, _) in runs.items():
      start = time.perf_counter()
      states[name], out = step_fn(states[name], batch)
      jax.block_until_ready(out)
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}
