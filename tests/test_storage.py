"""Work directories and data on an object store (gs://), through the offline stand-in of
tests/fake_gcs.py: a folder holds the buckets, and GCS's rules hold (no appends)."""

import json
import os
import shutil

import fsspec
import numpy as np
import pytest

import fake_gcs
from conftest import (
    STEPS,
    assert_resume_is_bit_identical,
    losses,
    main_command,
    make_config,
    on_fake_gcs,
    run_checked,
)
from rasr_jax import config as config_lib
from rasr_jax import storage
from rasr_jax.data import sources


@pytest.fixture(scope="module")
def buckets(tmp_path_factory):
  """The folder behind gs:// for this test process (installed once: epath caches it)."""
  root = str(tmp_path_factory.getbasetemp() / "buckets")
  fake_gcs.install(root)
  return root


def test_remote_paths_need_a_known_scheme_and_an_installed_backend(monkeypatch):
  with pytest.raises(config_lib.ConfigError, match="ftp:// is not a storage scheme"):
    config_lib.check_path("--workdir", "ftp://host/run")

  def not_installed(protocol):
    raise ImportError(protocol)

  monkeypatch.setattr(fsspec, "get_filesystem_class", not_installed)
  with pytest.raises(config_lib.ConfigError,
                     match=r"gs:// paths need the gcsfs package.*rasr_jax\[gcs\]"):
    config_lib.check_path("config.data.files", "a.txt,gs://b/*.jsonl")
  with pytest.raises(config_lib.ConfigError, match="must be a local path"):
    config_lib.check_path("--benchmarks_dir", "gs://b/x", local_only=True)
  config_lib.check_path("--workdir", "/tmp/local/run")  # local paths need nothing


def test_growing_files_append_locally_and_rewrite_objects(buckets, tmp_path):
  for path, on_disk in ((str(tmp_path / "m.jsonl"), tmp_path / "m.jsonl"),
                        ("gs://b/m.jsonl", os.path.join(buckets, "b", "m.jsonl"))):
    f = storage.GrowingFile(path, keep=b"kept\n")
    f.write(b"one\n")
    f.flush()
    assert open(on_disk, "rb").read() == b"kept\none\n"
    f.write(b"two\n")
    f.close()
    assert open(on_disk, "rb").read() == b"kept\none\ntwo\n"
  with pytest.raises(NotImplementedError):  # the stand-in keeps GCS's rule
    with fsspec.open("gs://b/m.jsonl", "a") as f:
      f.write("x")


def test_a_run_on_a_bucket_resumes_bit_identically_with_nothing_written_locally(
    buckets, straight_run, monkeypatch, tmp_path):
  """The tiny RASR run with its work directory in a bucket, cut at half and resumed, ends as
  the local uninterrupted run: the same losses and parameters, bit for bit. Checkpoints,
  metrics, TensorBoard events and the tokenizer are in the bucket; no local `gs:` folder."""
  monkeypatch.chdir(tmp_path)
  reference, config = straight_run
  workdir = "gs://bucket/run"
  assert_resume_is_bit_identical(config, reference, workdir)
  stored = os.path.join(buckets, "bucket", "run")
  assert os.path.isfile(os.path.join(stored, "checkpoints", str(STEPS), "commit_success.txt"))
  assert os.listdir(os.path.join(stored, "tensorboard"))
  assert os.path.isfile(os.path.join(stored, "tokenizer.model"))
  assert sorted(losses(workdir)) == list(range(1, STEPS + 1))  # each step once after the resume
  assert not os.listdir(tmp_path)


def test_generate_reads_a_bucket_and_writes_its_output_there(buckets, straight_run, tmp_path):
  """--mode=generate from a bucket work directory, prompts from and output to the bucket, as
  its own process (tests/fake_gcs.py in front of rasr_jax.main)."""
  reference, _ = straight_run
  root = str(tmp_path / "store")
  run = os.path.join(root, "b", "run")
  os.makedirs(os.path.dirname(run))
  shutil.copytree(reference, run)
  with open(os.path.join(root, "b", "prompts.jsonl"), "w") as f:
    f.write(json.dumps({"prompt": "tom has 3 apples"}) + "\n")
  run_checked(
      on_fake_gcs(
          root,
          main_command("gs://b/run", "--mode=generate", "--prompts_file=gs://b/prompts.jsonl",
                       "--output=gs://b/out.jsonl", "--max_new_tokens=4",
                       **{"train.steps": STEPS})))
  with open(os.path.join(root, "b", "out.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 1 and records[0]["prompt"] == "tom has 3 apples"


def test_data_files_in_a_bucket_read_as_local_ones(buckets, tmp_path):
  texts = [f"document {i}" for i in range(10)]
  bucket = os.path.join(buckets, "data")
  os.makedirs(os.path.join(bucket, "sub"), exist_ok=True)
  for where in (os.path.join(bucket, "sub", "a.jsonl"), str(tmp_path / "a.jsonl")):
    with open(where, "w") as f:
      f.write("".join(json.dumps({"text": t}) + "\n" for t in texts))

  def corpus(files):
    data = make_config(**{"data.source": "files", "data.files": files}).data
    return sources.load_corpus(data, seed=0)

  remote = corpus("gs://data/s*/*.jsonl")
  assert remote.documents == corpus(str(tmp_path / "a.jsonl")).documents == texts
  with pytest.raises(sources.DataError, match="Recursive `..` pattern not supported"):
    corpus("gs://data/**/*.jsonl")
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": texts}), os.path.join(bucket, "b.parquet"), row_group_size=3)
  parquet = corpus("gs://data/b.parquet")
  assert [parquet.documents[i] for i in range(10)] == texts
  np.testing.assert_array_equal(parquet.documents.blocks, [0, 3, 6, 9])
  open(os.path.join(bucket, "c.array_record"), "wb").write(b"x")
  with pytest.raises(sources.DataError, match="ArrayRecord files are read from a local path"):
    corpus("gs://data/c.array_record")


def test_a_keyed_folder_keeps_its_own_parts_and_drops_other_works(tmp_path):
  folder = str(tmp_path / "cache")
  storage.keyed_folder(folder, {"data": 1}, "*.part")
  (tmp_path / "cache" / "0.part").write_text("done")
  storage.keyed_folder(folder, {"data": 1}, "*.part")  # the same work resumes with its parts
  assert (tmp_path / "cache" / "0.part").read_text() == "done"
  storage.keyed_folder(folder, {"data": 2}, "*.part", writer=False)  # only the writer acts
  assert (tmp_path / "cache" / "0.part").exists()
  storage.keyed_folder(folder, {"data": 2}, "*.part")
  assert not (tmp_path / "cache" / "0.part").exists()
  assert json.loads((tmp_path / "cache" / "meta.json").read_text()) == {"data": 2}
