"""An offline stand-in for gs:// in a test process: a local folder holds the buckets.

`install(root)` makes `gs://BUCKET/PATH` mean ROOT/BUCKET/PATH for every layer that opens it:
etils.epath's fsspec backend (an fsspec `gcs` filesystem that, like GCS, cannot append), and
orbax's TensorStore kvstore (orbax asks the `gcs` driver for gs:// arrays: here the `file`
driver under ROOT) and its hierarchical-namespace probe (which would call Google's client).
Everything else in the project runs as it would on a bucket.

  python tests/fake_gcs.py ROOT -m rasr_jax.main --workdir=gs://bucket/run ...
"""

import os
import runpy
import sys

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


def install(root):
  os.makedirs(root, exist_ok=True)

  class Buckets(DirFileSystem):
    protocol = ("gcs", "gs")

    def __init__(self, *args, **kwargs):
      del args, kwargs  # gcsfs's options (epath passes finalize_on_close)
      super().__init__(path=root, fs=LocalFileSystem(auto_mkdir=True))

    def open(self, path, mode="rb", *args, **kwargs):
      if "a" in mode:
        raise NotImplementedError("GCS objects cannot be appended to")
      return super().open(path, mode, *args, **kwargs)

  fsspec.register_implementation("gcs", Buckets, clobber=True)
  fsspec.register_implementation("gs", Buckets, clobber=True)

  from orbax.checkpoint._src.path import gcs_utils

  def file_kvstore(path):
    bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(root, bucket, key)}

  gcs_utils.get_kvstore_for_gcs = file_kvstore
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False


def main():
  root, flag, module, *argv = sys.argv[1:]
  assert flag == "-m", "usage: fake_gcs.py ROOT -m MODULE [ARGS]"
  install(root)
  sys.argv = [module, *argv]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
