"""Converts a corpus into pre-tokenized ArrayRecord shards, which training reads a record at a
time (no corpus in memory, no tokenizing while training).

  python -m rasr_jax.data.convert --input='corpus/*.jsonl' --output=DIR \
      [--tokenizer=PATH | --vocab_size=N] [--text_field=text] [--shard_documents=100000] \
      [--workers=N]

Inputs are any files the corpus reads as text (.txt, .jsonl, JSON .array_record, .parquet),
checked as training checks them; .txt and .jsonl are read a line at a time. DIR receives
`shard-NNNNN.array_record` (each record a document's `Tokenizer.encode_document` ids, int32,
in the inputs' order), the tokenizer (the one given, or one trained on the first documents) and
`tokens.json`, which names the shards, the tokenizer's sha256 and the counts. Train on them with
`--config.data.source=files --config.data.files='DIR/*.array_record'
--config.data.tokenizer=DIR/<tokenizer file>`. Bad input is one `error:` line, exit 2, and
DIR is written only when the conversion succeeds (it is built beside it, then renamed).
"""

import json
import multiprocessing
import os
import shutil
import sys
import tempfile

import numpy as np
from absl import app, flags
from etils import epath

from configs import base as base_config
from rasr_jax import config as config_lib
from rasr_jax import progress
from rasr_jax.data import documents as docs_lib
from rasr_jax.data import sources
from rasr_jax.data import tokenizer as tok_lib

_DATA = base_config.get_config().data  # the defaults training checks its files with

_INPUT = flags.DEFINE_string("input", None, "Comma-separated globs of the files to convert.")
_OUTPUT = flags.DEFINE_string("output", None, "The folder to create (must not exist).")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "A tokenizer (sentencepiece .model, tokenizer.json or a folder holding "
    "one); without it one is trained on the first documents.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", None,
                                   "The vocabulary of the tokenizer trained without --tokenizer.")
_TOKENIZER_DOCS = flags.DEFINE_integer("tokenizer_sample_docs", _DATA.tokenizer_sample_docs,
                                       "Documents the tokenizer trainer reads at most.")
_TEXT_FIELD = flags.DEFINE_string("text_field", _DATA.text_field, "The text's field (.jsonl, "
                                  "Parquet, JSON ArrayRecord).")
_INVALID_UTF8 = flags.DEFINE_enum("invalid_utf8", _DATA.invalid_utf8, config_lib.UTF8_POLICIES,
                                  "Invalid UTF-8 in a text file: error, or replace it.")
_MAX_CHARS = flags.DEFINE_integer("max_document_chars", _DATA.max_document_chars,
                                  "A longer document is refused (0 = no limit).")
_SHARD_DOCS = flags.DEFINE_integer("shard_documents", 100_000, "Documents per shard.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count(), "Processes that tokenize.")

SHARD_NAME = "shard-{:05d}.array_record"
WRITER_OPTIONS = "group_size:1"  # one record a chunk: random access reads one document
CHUNK_DOCUMENTS = 256  # documents a worker tokenizes per task

_worker_tokenizer = None


def _start_worker(tokenizer_path):
  global _worker_tokenizer
  _worker_tokenizer = tok_lib.load(tokenizer_path)


def _record(tokenizer, text):
  """A document's shard record: its `encode_document` ids as int32 bytes."""
  return np.asarray(tokenizer.encode_document(text), np.int32).tobytes()


def _encode_chunk(texts):
  return [_record(_worker_tokenizer, t) for t in texts]


def _chunks(iterable, size):
  chunk = []
  for item in iterable:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _encoded(docs, tokenizer, tokenizer_path, workers):
  """Each document's int32 ids as bytes, in order; tokenized by `workers` processes."""
  if workers <= 1:
    yield from (_record(tokenizer, d) for d in docs)
    return
  context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
  with context.Pool(workers, _start_worker, (tokenizer_path,)) as pool:
    for chunk in pool.imap(_encode_chunk, _chunks(docs, CHUNK_DOCUMENTS), chunksize=4):
      yield from chunk


def _line_count(path):
  with epath.Path(path).open("rb") as f:
    return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b"")) + 1


def _text_documents(path, field, policy, limit):
  """A .txt / .jsonl file's documents, a line at a time, checked as sources checks them."""
  with epath.Path(path).open("rb") as f:
    for number, raw in enumerate(f, 1):
      text, _ = sources.decode_utf8(f"{path} line {number}", raw, policy)
      for _, doc in sources.line_documents(path, text, field, first_line=number):
        if limit and len(doc) > limit:
          raise sources.DataError(f"data file {path} line {number}: a document of {len(doc):,} "
                                  f"characters exceeds --max_document_chars={limit:,}")
        yield doc


def _inputs(patterns, field):
  """[(path, the documents of a record file, or None for a text file)] of the files `patterns`
  match, in order; record files are opened and checked here, before any conversion."""
  inputs = []
  for path in sources.expand_globs(patterns, "--input"):
    documents = None
    if not path.endswith(sources.TEXT_EXTENSIONS):
      documents = sources.record_documents(path, field)
      if docs_lib.token_parts(documents):
        raise sources.DataError(f"data file {path}: already token shards")
    inputs.append((path, documents))
  return inputs


def _documents(inputs, field, policy, limit):
  """The documents of `inputs` (see `_inputs`), in order."""
  for path, documents in inputs:
    if documents is None:
      yield from _text_documents(path, field, policy, limit)
    else:
      yield from (documents[i] for i in range(len(documents)))


def _upper_count(inputs):
  """How many documents `inputs` hold at most (a text file's lines), for the progress line."""
  return sum(
      _line_count(path) if documents is None else len(documents) for path, documents in inputs)


def _tokenizer(patterns, field, policy, limit):
  if _TOKENIZER.value:
    return tok_lib.load(_TOKENIZER.value)
  if not _VOCAB_SIZE.value:
    raise app.UsageError("give --tokenizer, or --vocab_size for one trained on the input")
  docs = _documents(_inputs(patterns, field), field, policy, limit)
  return tok_lib.train([doc for doc, _ in zip(docs, range(_TOKENIZER_DOCS.value))],
                       _VOCAB_SIZE.value)


def convert(patterns,
            output,
            tokenizer,
            *,
            field="text",
            policy="error",
            limit=0,
            shard_documents=100_000,
            workers=1):
  """Writes the shards of `patterns`' documents, `tokenizer` and tokens.json to `output`."""
  from array_record.python import array_record_module  # grain's dependency
  if os.path.exists(output):
    raise sources.DataError(f"--output {output}: already exists")
  inputs = _inputs(patterns, field)
  docs = _documents(inputs, field, policy, limit)
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  building = tempfile.mkdtemp(prefix=".converting-", dir=parent)
  try:
    tokenizer_path = os.path.join(building, tokenizer.file_name)
    tokenizer.save(tokenizer_path)
    shards, documents, tokens, writer = [], 0, 0, None
    encoded = _encoded(progress.track(docs, _upper_count(inputs), "converting", "documents"),
                       tokenizer, tokenizer_path, workers)
    for record in encoded:
      if documents % shard_documents == 0:
        if writer:
          writer.close()
        shards.append(SHARD_NAME.format(len(shards)))
        writer = array_record_module.ArrayRecordWriter(os.path.join(building, shards[-1]),
                                                       WRITER_OPTIONS)
      writer.write(record)
      documents += 1
      tokens += len(record) // np.dtype(np.int32).itemsize
    if writer:
      writer.close()
    if not documents:
      raise sources.DataError(f"--input {patterns}: no documents")
    meta = {
        "format": docs_lib.TOKENS_FORMAT,
        "version": docs_lib.TOKENS_VERSION,
        "tokenizer": tokenizer.file_name,
        "tokenizer_sha256": tokenizer.checksum,
        "shards": shards,
        "documents": documents,
        "tokens": tokens,
        "inputs": [path for path, _ in inputs],
    }
    with open(os.path.join(building, docs_lib.TOKENS_META), "w") as f:
      json.dump(meta, f, indent=2)
    os.rename(building, output)
  except BaseException:
    shutil.rmtree(building, ignore_errors=True)
    raise
  return meta


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError("--input and --output are required")
  try:
    for name, value in (("--input", _INPUT.value), ("--output", _OUTPUT.value),
                        ("--tokenizer", _TOKENIZER.value or "")):
      config_lib.check_path(name, value, local_only=name == "--output")
    if _SHARD_DOCS.value <= 0:
      raise config_lib.ConfigError(f"--shard_documents={_SHARD_DOCS.value}: must be > 0")
    if os.path.exists(_OUTPUT.value):
      raise sources.DataError(f"--output {_OUTPUT.value}: already exists")
    args = (_INPUT.value, _TEXT_FIELD.value, _INVALID_UTF8.value, _MAX_CHARS.value)
    tokenizer = _tokenizer(*args)
    meta = convert(_INPUT.value,
                   _OUTPUT.value,
                   tokenizer,
                   field=_TEXT_FIELD.value,
                   policy=_INVALID_UTF8.value,
                   limit=_MAX_CHARS.value,
                   shard_documents=_SHARD_DOCS.value,
                   workers=_WORKERS.value)
  except (sources.DataError, tok_lib.TokenizerError, config_lib.ConfigError) as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  print(json.dumps({k: meta[k] for k in ("documents", "tokens", "shards", "tokenizer")}))


if __name__ == "__main__":
  app.run(main)
