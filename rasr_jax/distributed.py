"""Multi-process start: `jax.distributed.initialize` before anything touches the backend.

Explicit when a coordinator address is given (with the process count and id); automatic (jax's
cluster detection: TPU VM metadata, SLURM, Open MPI) with `--distributed` or inside a SLURM job
of several tasks; nothing otherwise (one process).
"""

import os

import jax
from absl import logging
from jax.experimental import multihost_utils

from rasr_jax import config as config_lib


def cluster_detected(env=os.environ):
  """Whether this process is one of several that jax's cluster detection can find."""
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env


def initialize(coordinator_address=None,
               num_processes=None,
               process_id=None,
               bind_address=None,
               detect=False):
  """Joins the job's processes; returns whether jax.distributed was initialised."""
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise config_lib.ConfigError("--coordinator_address needs --num_processes and "
                                   "--process_id")
    if not 0 <= process_id < num_processes:
      raise config_lib.ConfigError(f"--process_id={process_id} must be in [0, "
                                   f"--num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id,
                               coordinator_bind_address=bind_address)
    return True
  if num_processes is not None or process_id is not None:  # else each host would train alone
    raise config_lib.ConfigError("--num_processes and --process_id need --coordinator_address")
  if detect or cluster_detected():
    jax.distributed.initialize(coordinator_bind_address=bind_address)
    return True
  return False


def sync(name):
  """Waits until every process of a multi-process job reaches `name` (nothing in one
  process): after process 0 writes files that the others then read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def leave():
  """Leaves the job if this process joined one (what jax's exit hook does, for a process that
  exits without the interpreter's teardown)."""
  if jax.distributed.is_initialized():
    try:
      jax.distributed.shutdown()
    except Exception as e:  # the other processes may be gone already; the exit goes on
      logging.warning("leaving the distributed job failed: %s", e)
