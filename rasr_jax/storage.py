"""Paths through etils.epath: local paths, and `gs://` (or `s3://`, `az://`, `hf://`) wherever the
scheme's fsspec backend is installed (gcsfs for gs://: the `gcs` extra).

Work directories, checkpoints (orbax opens remote paths itself), metrics, TensorBoard, tokenizers,
config files, evaluation outputs and the text and Parquet data files go through here. Object
stores cannot append, so files that grow (metrics.jsonl, TensorBoard events) are `GrowingFile`s:
locally appended, remotely rewritten whole at each flush. ArrayRecord files are opened by their
C++ reader, which reads local (or mounted) files only.
"""

import glob as glob_lib
import json
import os

from etils import epath


def is_remote(path) -> bool:
  return "://" in str(path)


def absolute(path) -> str:
  """`path` made absolute (a remote path is already)."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(str(path)))


def glob(pattern) -> list[str]:
  """The files `pattern` matches, sorted (`**` spans folders)."""
  if not is_remote(pattern):
    return sorted(
        p for p in glob_lib.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
  parts = pattern.split("/")
  fixed = next(i for i, part in enumerate(parts) if glob_lib.has_magic(part) or i == len(parts) - 1)
  if not glob_lib.has_magic(parts[fixed]):  # no wildcard: the path itself
    return [pattern] if epath.Path(pattern).is_file() else []
  root = epath.Path("/".join(parts[:fixed]))
  return sorted(str(p) for p in root.glob("/".join(parts[fixed:])) if p.is_file())


def makedirs(path):
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def keyed_folder(folder, identity: dict, parts_glob, writer=True):
  """Makes `folder` hold parts of the work `identity` (JSON) names: when its meta.json names
  other work, the parts (`parts_glob`) are deleted and meta.json rewritten, so a resumed job
  reuses only its own parts. Only the `writer` process changes anything."""
  meta = epath.Path(folder, "meta.json")
  if writer and (not meta.exists() or json.loads(meta.read_text()) != identity):
    makedirs(folder)
    for stale in epath.Path(folder).glob(parts_glob):
      stale.unlink()
    write_atomically(str(meta), json.dumps(identity).encode())


def write_atomically(path, data: bytes):
  """Writes `path` whole: locally through a renamed temporary file; an object store's write is
  whole (an object appears when its upload completes)."""
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


class GrowingFile:
  """A binary file written by appends: appended locally; on an object store (which cannot
  append) its bytes are kept and the whole object is rewritten at each `flush`."""

  def __init__(self, path, keep=b""):
    """Opens `path` for appending after `keep`, its kept prefix (the file is truncated to it)."""
    self.path = str(path)
    self._remote = is_remote(path)
    self._data = bytearray(keep) if self._remote else None
    write_atomically(self.path, keep)
    self._file = None if self._remote else open(self.path, "ab")

  def write(self, data: bytes):
    if self._remote:
      self._data += data
    else:
      self._file.write(data)

  def flush(self):
    if self._remote:
      epath.Path(self.path).write_bytes(bytes(self._data))
    else:
      self._file.flush()

  def close(self):
    self.flush()
    if self._file is not None:
      self._file.close()


class _TensorBoardFiles:
  """tensorboardX's writer factory for remote logdirs: event files are GrowingFiles."""

  def open(self, path):
    return GrowingFile(path)

  def directory_check(self, path):
    makedirs(path)


def register_tensorboard_writers():
  """Routes tensorboardX's remote event files through epath (for gs://, in place of its own
  google-cloud-storage writer)."""
  from tensorboardX import record_writer
  for scheme in ("gs", "s3", "az", "hf"):
    record_writer.register_writer_factory(scheme, _TensorBoardFiles())
