"""orbax CheckpointManager with three items: `state`, `data` (grain iterator) and `meta` (JSON).

Before anything is restored, the stored metadata is compared with the model being built:
parameter shapes and dtypes (every differing path listed), layer layout, tokenizer checksum and
data fingerprint. orbax would cast dtypes silently; this refuses instead. A save that fails
(at once or in the background) raises SaveError by the next save or wait at the latest.
"""

import contextlib
import dataclasses
import glob
import os
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rasr_jax import storage

LAYER_LAYOUT = "scanned"  # blocks stacked on a leading `layers` axis


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable or does not match the model; names the problem."""


class SaveError(RuntimeError):
  """A checkpoint save failed (e.g. the directory became unwritable); that step is not listed."""


def param_signature(params) -> dict:
  """{"a/b/c": [shape, dtype]} for every parameter (arrays or ShapeDtypeStructs)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(k.key) for k in path): [list(x.shape), str(x.dtype)] for path, x in flat}


def param_problems(stored: dict, expected: dict) -> list[str]:
  """Every parameter whose shape or dtype differs between two metadata dicts, or is missing."""
  problems = []
  want, have = expected["params"], stored.get("params", {})
  for path in sorted(set(want) | set(have)):
    if path not in have:
      problems.append(f"{path}: missing in checkpoint")
    elif path not in want:
      problems.append(f"{path}: not in model")
    elif have[path] != want[path]:
      problems.append(f"{path}: checkpoint {have[path][1]}{have[path][0]} vs model "
                      f"{want[path][1]}{want[path][0]}")
  return problems


def compare_meta(stored: dict, expected: dict):
  """Raises CheckpointError listing every way `stored` metadata differs from `expected`."""
  problems = param_problems(stored, expected)
  for key, what in (("layer_layout", "layer layout"), ("tokenizer_sha256", "tokenizer"),
                    ("data_fingerprint", "data files")):
    if stored.get(key) != expected[key]:
      problems.append(f"{what} differ(s) from the checkpoint's ({key})")
  for name, value in stored.get("data_order", {}).items():  # absent in older checkpoints
    if expected["data_order"].get(name) != value:
      problems.append(f"{name}={expected['data_order'].get(name)} differs from the checkpoint's "
                      f"{value} (the saved data position would point into another order)")
  if problems:
    raise CheckpointError("checkpoint does not match the run: " + "; ".join(problems))


class Checkpointer:
  """Saves and restores (state, data iterator, metadata) under DIR/<step>.

  `on_commit(step)`, when given, runs in orbax's background thread once every file of a save is
  written to its temporary directory, before the rename that publishes it. `read_only`: a
  reader (generation, evaluation, export) beside a training run that may be saving: it never
  deletes or cleans up anything.
  """

  def __init__(self, directory, ckpt_cfg, on_commit=None, read_only=False):
    self.directory = storage.absolute(directory)
    self._on_commit = on_commit
    # The step of the newest save request. Set only once the save before it is complete, so
    # orbax's commit thread reads the step it is committing.
    self._last_requested_step = None
    if not read_only and jax.process_index() == 0 and not storage.is_remote(self.directory):
      # An interrupted local save, never listed (on an object store orbax marks complete steps
      # with commit_success.txt instead of renaming them).
      for leftover in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
        shutil.rmtree(leftover, ignore_errors=True)
    at_commit = self._at_commit if on_commit is not None else None
    options = ocp.CheckpointManagerOptions(
        read_only=read_only,
        max_to_keep=None if read_only else ckpt_cfg.max_to_keep,
        enable_async_checkpointing=ckpt_cfg.async_save,
        cleanup_tmp_directories=True,
        async_options=ocp.AsyncOptions(
            # Made in the background, an unwritable step directory is reported only after
            # orbax's 300 s signal timeout; made in save(), it fails that save at once.
            create_directories_asynchronously=False,
            post_finalization_callback=at_commit))
    self._manager = ocp.CheckpointManager(self.directory,
                                          options=options,
                                          item_names=("state", "data", "meta"))

  def _at_commit(self):  # in orbax's background thread: every file written, none renamed
    self._on_commit(self._last_requested_step)

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, state, data_iterator, meta):
    """Saves step `step` (in the background with checkpoint.async_save) once the previous save
    is complete; raises SaveError naming the step if this save or the previous one failed."""
    self.wait()
    self._last_requested_step = step
    jax.block_until_ready(state)  # an error of the step itself is not reported as a save's
    with self._save_errors():
      self._manager.save(step,
                         force=True,
                         args=ocp.args.Composite(
                             state=ocp.args.StandardSave(state),
                             data=grain.checkpoint.CheckpointSave(data_iterator),
                             meta=ocp.args.JsonSave(meta)))

  def wait(self):
    """Blocks until the save in flight is complete; raises SaveError if it failed."""
    with self._save_errors():
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _save_errors(self):
    """orbax's error of a failed save -> SaveError naming the step and the newest good one."""
    try:
      yield
    except Exception as e:
      newest = self._manager.latest_step()
      raise SaveError(
          f"checkpoint save of step {self._last_requested_step} failed in {self.directory} "
          f"({type(e).__name__}: {' '.join(str(e).split())}); the newest complete checkpoint "
          f"is {'none' if newest is None else f'step {newest}'}") from e

  def read_meta(self, step):
    try:
      return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # orbax raises many kinds for unreadable files
      raise CheckpointError(
          f"checkpoint {self.directory}/{step}: unreadable metadata ({e})") from None

  def restore(self, step, abstract_state, data_iterator=None):
    """Restores `state` onto the shardings of `abstract_state`, and the iterator in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
      raise CheckpointError(f"checkpoint {self.directory}/{step}: cannot restore ({e})") from None
    return restored.state

  def restore_fields(self, step, abstract_fields: dict):
    """Restores only some fields of the saved state (e.g. params, step, tau for inference):
    `abstract_fields` maps field names to abstract pytrees (see `_restore_args`)."""
    try:
      return _partial_restore(os.path.join(self.directory, str(step), "state"), abstract_fields)
    except Exception as e:
      raise CheckpointError(f"checkpoint {self.directory}/{step}: cannot restore ({e})") from None

  def close(self, raise_errors=True):
    """Waits for the save in flight, then closes; if that save failed, raises SaveError, or
    only logs it with raise_errors=False (when another error is already on its way)."""
    try:
      with self._save_errors():
        self._manager.close()
    except SaveError as e:
      if raise_errors:
        raise
      logging.error("%s", e)


def _restore_args(abstract):
  """orbax restore arguments: onto the sharding an abstract array carries, else into host
  numpy arrays (so a tool can read a model larger than one device)."""

  def one(leaf):
    if getattr(leaf, "sharding", None) is None:
      return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
    return ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape, dtype=leaf.dtype)

  return jax.tree.map(one, abstract)


def _partial_restore(path, abstract):
  """The entries of `abstract` (a subtree of what was saved at `path`)."""
  args = ocp.args.PyTreeRestore(item=abstract,
                                partial_restore=True,
                                restore_args=_restore_args(abstract))
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(path, args=args)


def save_params(path, params):
  """Parameters alone (a nested dict of arrays) as an orbax checkpoint at `path` (new)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(storage.absolute(path), params)


def restore_params(path, abstract_params):
  """Parameters saved by `save_params`, checked against `abstract_params` (every differing
  path listed) and placed on the shardings the abstract arrays carry (host numpy without)."""
  path = storage.absolute(path)
  if not epath.Path(path).is_dir():
    raise CheckpointError(f"parameters {path}: not found")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      stored = checkpointer.metadata(path)
      stored = getattr(stored, "item_metadata", stored)
      problems = param_problems({"params": param_signature(stored)},
                                {"params": param_signature(abstract_params)})
      if problems:
        raise CheckpointError(f"parameters {path} do not match the model: " + "; ".join(problems))
    return _partial_restore(path, abstract_params)
  except CheckpointError:
    raise
  except Exception as e:  # orbax raises many kinds for unreadable files
    raise CheckpointError(f"parameters {path}: cannot restore ({e})") from None


@dataclasses.dataclass(frozen=True)
class InitialParams:
  """What `config.init_from` names: parameters saved alone (`save_params`, e.g. imported ones)
  or a training checkpoint (a step directory, a checkpoints directory or a work directory: its
  newest complete step)."""
  path: str  # the orbax directory holding the parameters (a training step's `state` item)
  meta: dict | None = None  # the training checkpoint's metadata; None for parameters alone
  workdir: str | None = None  # the training run's work directory; None likewise


def _step_name(path):
  name = os.path.basename(path.rstrip("/"))
  return int(name) if name.isdigit() else None


def locate_initial(path) -> InitialParams:
  """The parameters `path` (config.init_from) names; CheckpointError when there are none."""
  path = storage.absolute(path).rstrip("/")
  root = epath.Path(path)
  if not root.is_dir():
    raise CheckpointError(f"config.init_from {path}: not found")
  if (root / "checkpoints").is_dir():
    directory, step = checkpoint_dir(path), None
  elif (root / "state").is_dir() and _step_name(path) is not None:
    directory, step = os.path.dirname(path), _step_name(path)
  elif any(_step_name(str(child)) is not None for child in root.iterdir()):
    directory, step = path, None
  else:
    return InitialParams(path)
  manager = ocp.CheckpointManager(directory,
                                  options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_names=("state", "data", "meta"))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"config.init_from {path}: no complete checkpoint in {directory}")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  except CheckpointError:
    raise
  except Exception as e:  # orbax raises many kinds for unreadable files
    raise CheckpointError(f"config.init_from {path}: unreadable checkpoint ({e})") from None
  finally:
    manager.close()
  return InitialParams(os.path.join(directory, str(step), "state"), meta,
                       os.path.dirname(directory))


def restore_initial(initial: InitialParams, abstract_params):
  """The parameters of `initial` placed like `abstract_params`. A training checkpoint may hold
  more (a RASR model's heads, for a model without them): those are left out, logged; a
  parameter the model has and the checkpoint lacks, or one of another shape, is an error."""
  if initial.meta is None:
    return restore_params(initial.path, abstract_params)
  problems = param_problems(initial.meta, {"params": param_signature(abstract_params)})
  left_out = [p for p in problems if p.endswith(": not in model")]
  problems = [p for p in problems if p not in left_out]
  if problems:
    raise CheckpointError(f"config.init_from {initial.path} does not match the model: "
                          + "; ".join(problems))
  if left_out:
    logging.info("config.init_from: %d parameters the model has no use for are left out (%s)",
                 len(left_out), ", ".join(p.split(":")[0] for p in left_out))
  try:
    return _partial_restore(initial.path, {"params": abstract_params})["params"]
  except Exception as e:  # orbax raises many kinds for unreadable files
    raise CheckpointError(f"config.init_from {initial.path}: cannot restore ({e})") from None


def with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that carry the shardings to restore onto."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_state, shardings)


def checkpoint_dir(workdir):
  return os.path.join(workdir, "checkpoints")


def imported_params_dir(workdir):
  """Where `python -m rasr_jax.interop.hf import` writes a model's parameters (`save_params`)."""
  return os.path.join(workdir, "imported_params")


def check_writable(directory):
  """Raises CheckpointError unless a file can be written in `directory` (locally or in a bucket;
  at start-up: orbax would otherwise fail the first save only after its 300 s signal timeout)."""
  probe = epath.Path(directory, f".rasr-write-test-{os.getpid()}")
  try:
    storage.makedirs(directory)
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(f"checkpoint directory {directory} is not writable "
                          f"({e.strerror or e})") from None
