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


def interleaved_call_medians(calls, rounds):
  """{name: median seconds per call}, calling each zero-argument function in turn, `rounds`
  times, after two warm-up calls each. Interleaving keeps slow drifts of the machine out of the
  ratios between them. A call returns what `jax.block_until_ready` should wait for."""
  for call in calls.values():
    for _ in range(2):
      jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def interleaved_medians(runs, batch, rounds):
  """{name: median seconds per step} of train steps timed in turn (see interleaved_call_medians).

  `runs` maps a name to (step_fn, state); each run carries its own state from step to step.
  """

  def stepper(step_fn, state):
    holder = {"state": state}

    def call():
      holder["state"], out = step_fn(holder["state"], batch)
      return out

    return call

  return interleaved_call_medians({name: stepper(*run) for name, run in runs.items()}, rounds)
