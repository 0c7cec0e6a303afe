"""Corpora at scale: converted token shards, Parquet, JSON ArrayRecord, weighted mixtures."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, make_config, subprocess_env
from rasr_jax import config as config_lib
from rasr_jax.data import convert, pipeline, sources
from rasr_jax.data import tokenizer as tok_lib

TEXTS = [f"document {i}: " + "word " * (i % 13) + f"end {i * 7}" for i in range(60)]


class _OneTokenPerDoc:
  """Document i (the string 'i') encodes to the single token i + 2; <eos> is 1."""
  eos_id = 1

  def encode_document(self, text):
    return [int(text) + 2, self.eos_id]


def _data_cfg(files="", **kw):
  return make_config(**{"data.source": "files", "data.files": files, **kw}).data


def _batches(corpus, tokenizer, count, state=None, streams=2):
  it = pipeline.ResumableIterator(
      pipeline.make_dataset(corpus, tokenizer, seq_len=15, global_batch=4, seed=5, streams=streams))
  if state is not None:
    it.set_state(state)
  return it, [next(it) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
  return tok_lib.train(TEXTS * 20, 300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tokenizer):
  """TEXTS as .jsonl, and converted into shards of 7 documents."""
  folder = tmp_path_factory.mktemp("corpus")
  (folder / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
  out = folder / "shards"
  meta = convert.convert(str(folder / "docs.jsonl"), str(out), tokenizer, shard_documents=7)
  return folder, out, meta


def test_converted_shards_feed_exactly_the_batches_of_their_jsonl(converted, tokenizer):
  folder, out, meta = converted
  assert meta["documents"] == 60 and len(meta["shards"]) == 9
  assert meta["tokens"] == sum(len(tokenizer.encode_document(t)) for t in TEXTS)
  jsonl = sources.load_corpus(_data_cfg(str(folder / "docs.jsonl")), seed=0)
  shards = sources.load_corpus(_data_cfg(str(out / "*.array_record")), seed=0)
  assert len(shards.documents) == 60 and shards.fingerprint != jsonl.fingerprint
  np.testing.assert_array_equal(shards.documents[12], tokenizer.encode_document(TEXTS[12]))
  np.testing.assert_array_equal(
      pickle.loads(pickle.dumps(shards.documents))[12],  # as grain workers get it
      tokenizer.encode_document(TEXTS[12]))
  _, want = _batches(jsonl, tokenizer, 8)
  _, got = _batches(shards, tokenizer, 8)
  for a, b in zip(want, got, strict=True):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["segment_ids"], b["segment_ids"])
  loaded = tok_lib.load(str(out / meta["tokenizer"]))
  sources.check_tokenized(shards, loaded.checksum)  # the copied tokenizer is the shards' own


def test_token_shards_refuse_another_tokenizer_and_tokenizer_training(converted):
  _, out, _ = converted
  shards = sources.load_corpus(_data_cfg(str(out / "*.array_record")), seed=0)
  other = tok_lib.train(["something else entirely"] * 50, 300)
  with pytest.raises(sources.DataError, match="converted with the tokenizer of sha256"):
    sources.check_tokenized(shards, other.checksum)
  with pytest.raises(sources.DataError, match="token shards, which hold no text"):
    shards.texts(10)


def test_a_shard_its_folder_does_not_list_is_refused(converted, tmp_path):
  _, out, _ = converted
  (tmp_path / "tokens.json").write_text((out / "tokens.json").read_text())
  (tmp_path / "stray.array_record").write_bytes((out / "shard-00000.array_record").read_bytes())
  with pytest.raises(sources.DataError, match="stray.array_record: not one of the shards"):
    sources.load_corpus(_data_cfg(str(tmp_path / "*.array_record")), seed=0)


def _parquet(path, texts, row_group_size, field="text"):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({
      field: texts,
      "id": list(range(len(texts)))
  }),
                 path,
                 row_group_size=row_group_size)


def _ids(batches):
  return [int(t) - 2 for b in batches for t in b["tokens"].reshape(-1) if t != 1]


def test_parquet_is_read_in_row_group_blocks_once_per_epoch_and_resumes_exactly(tmp_path):
  """40 documents in row groups of 5, 2 tokens each, one stream: 16 tokens a batch, an epoch
  every 5 batches. Each epoch holds every document once, in an order of its own; a stream's
  first 5 documents are one row group (blocks are shuffled, not documents); a resume from the
  JSON state is exact."""
  _parquet(tmp_path / "a.parquet", [str(i) for i in range(40)], row_group_size=5)
  corpus = sources.load_corpus(_data_cfg(str(tmp_path / "*.parquet")), seed=0)
  assert len(corpus.documents) == 40 and corpus.documents[13] == "13"
  assert pickle.loads(pickle.dumps(corpus.documents))[13] == "13"  # as grain workers get it
  it, want = _batches(corpus, _OneTokenPerDoc(), 10, streams=1)
  ids = _ids(want)
  for epoch in range(2):
    assert sorted(ids[40 * epoch:40 * (epoch + 1)]) == list(range(40))
  assert ids[40:80] != ids[:40]  # each epoch its own order
  assert len({i // 5 for i in ids[:5]}) == 1 and ids[:5] != sorted(ids[:5])
  assert ids[:40] != sorted(ids[:40])
  it, first = _batches(corpus, _OneTokenPerDoc(), 3, streams=1)
  _, rest = _batches(corpus, _OneTokenPerDoc(), 7, state=it.get_state(), streams=1)
  assert _ids(first + rest) == ids


def test_parquet_without_the_text_column_is_refused(tmp_path):
  _parquet(tmp_path / "a.parquet", ["x", "y"], row_group_size=1, field="body")
  with pytest.raises(sources.DataError, match="a.parquet: no string column 'text'"):
    sources.load_corpus(_data_cfg(str(tmp_path / "a.parquet")), seed=0)
  (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
  with pytest.raises(sources.DataError, match="b.parquet: not a readable Parquet file"):
    sources.load_corpus(_data_cfg(str(tmp_path / "b.parquet")), seed=0)


def _json_records(path, records):
  from array_record.python import array_record_module
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for record in records:
    writer.write(json.dumps(record).encode())
  writer.close()


def test_json_array_records_are_documents_and_a_missing_field_is_named(tmp_path):
  _json_records(tmp_path / "a.array_record", [{"text": t} for t in TEXTS[:5]])
  corpus = sources.load_corpus(_data_cfg(str(tmp_path / "a.array_record")), seed=0)
  assert [corpus.documents[i] for i in range(5)] == TEXTS[:5] and corpus.texts(2) == TEXTS[:2]
  _json_records(tmp_path / "b.array_record", [{"body": "x"}])
  with pytest.raises(sources.DataError, match="b.array_record record 0: expected a UTF-8 JSON"):
    sources.load_corpus(_data_cfg(str(tmp_path / "b.array_record")), seed=0)


def test_a_mixture_draws_by_weight_and_each_component_once_per_its_epoch(tmp_path):
  (tmp_path / "a.txt").write_text("".join(f"{i}\n" for i in range(0, 30)))
  (tmp_path / "b.txt").write_text("".join(f"{i}\n" for i in range(100, 110)))
  spec = f"{tmp_path}/a.txt=3;{tmp_path}/b.txt=1"
  corpus = sources.load_corpus(_data_cfg(**{"data.mixture": spec}), seed=0)
  assert corpus.weights == (0.75, 0.25)
  _, batches = _batches(corpus, _OneTokenPerDoc(), 20, streams=1)
  ids = _ids(batches)[:120]  # 90 of a (3 epochs) and 30 of b (3 epochs)
  from_a, from_b = [i for i in ids if i < 100], [i for i in ids if i >= 100]
  assert len(from_a) == 90 and len(from_b) == 30
  for epoch in range(3):
    assert sorted(from_a[30 * epoch:30 * (epoch + 1)]) == list(range(30))
    assert sorted(from_b[10 * epoch:10 * (epoch + 1)]) == list(range(100, 110))
  qa_joined = sources.joined(corpus, ["5"] * 40, "qa_files")  # 40 of 80 documents: half
  assert qa_joined.weights == (0.375, 0.125, 0.5)


@pytest.mark.parametrize("spec, message", [
    ("a.txt=-1;b.txt=1", "weight must be a finite number > 0"),
    ("a.txt=0;b.txt=1", "weight must be a finite number > 0"),
    ("a.txt", "is not GLOBS=WEIGHT"),
    ("a.txt=x", "is not GLOBS=WEIGHT"),
])
def test_bad_mixtures_are_refused_at_start_up(spec, message):
  with pytest.raises(config_lib.ConfigError, match=f"config.data.mixture=.*{message}"):
    _data_cfg(**{"data.mixture": spec})
  with pytest.raises(config_lib.ConfigError, match="replaces data.files"):
    _data_cfg("x.txt", **{"data.mixture": "a.txt=1"})


def _convert_cli(*args):
  return subprocess.run([sys.executable, "-m", "rasr_jax.data.convert", *args],
                        cwd=REPO,
                        env=subprocess_env(),
                        capture_output=True,
                        text=True,
                        timeout=120)


def test_convert_cli_trains_a_tokenizer_and_refuses_bad_input(tmp_path):
  (tmp_path / "docs.txt").write_text("".join(t + "\n" for t in TEXTS))
  result = _convert_cli(f"--input={tmp_path}/docs.txt", f"--output={tmp_path}/out",
                        "--vocab_size=300", "--shard_documents=25")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["documents"] == 60 and len(summary["shards"]) == 3
  corpus = sources.load_corpus(_data_cfg(f"{tmp_path}/out/*.array_record"), seed=0)
  trained = tok_lib.load(f"{tmp_path}/out/{summary['tokenizer']}")
  np.testing.assert_array_equal(corpus.documents[59], trained.encode_document(TEXTS[59]))

  (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
  bad = _convert_cli(f"--input={tmp_path}/bad.jsonl", f"--output={tmp_path}/bad_out",
                     f"--tokenizer={tmp_path}/out/{summary['tokenizer']}")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      f"error: data file {tmp_path}/bad.jsonl line 2: expected an object with a string field "
      "'text' (config.data.text_field)")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "docs.txt", "out"]
