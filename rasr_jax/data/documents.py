"""Random-access documents in each storage format the corpus reads.

Every collection here is a sequence (`len`, `[i]`) of documents. A document is text (`str`) or,
in token shards written by `python -m rasr_jax.data.convert`, the document already encoded
(`Tokenizer.encode_document` as an int32 array). Apart from `.txt` / `.jsonl` files (read whole
at start-up by `sources`, a plain list), a collection reads a record only when it is asked for:
a process, and each grain worker, holds open files and (Parquet) the row groups it last decoded,
never the corpus.

  .array_record + tokens.json   TokenShards   the converter's shards: records are int32 ids
  .array_record                 JsonRecords   records are UTF-8 JSON objects with the text field
  .parquet                      ParquetDocuments   a string column, the text field

A Parquet file is decoded a row group at a time, so its documents are shuffled in blocks
(`blocks`: the row groups, visited in random order, each one's rows in random order) rather than
one at a time; see pipeline.document_order.
"""

import bisect
import collections
import hashlib
import json
import os
import threading

import numpy as np
from etils import epath

from rasr_jax import storage

TOKENS_META = "tokens.json"  # the converter's description of the shards in its folder
TOKENS_FORMAT = "rasr_jax token shards"
TOKENS_VERSION = 1


class DataError(ValueError):
  """A data file or glob is unusable; the message names it."""


DIGEST_ENDS = 1 << 16  # bytes hashed at each end of a large data file


def file_digest(path) -> bytes:
  """sha256 over a large file's size and its first and last 64 KiB (an ArrayRecord file's
  footer indexes every chunk, a Parquet file's every row group): it tells files apart, and
  notices a file replaced or grown, without reading a corpus at start-up (each process reads
  128 KiB a file, however many shards)."""
  with epath.Path(path).open("rb") as f:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    digest = hashlib.sha256(str(size).encode())
    digest.update(f.read(DIGEST_ENDS))
    if size > DIGEST_ENDS:  # the rest, or the last 64 KiB (every byte is read once at most)
      f.seek(max(DIGEST_ENDS, size - DIGEST_ENDS))
      digest.update(f.read())
  return digest.digest()


class _ArrayRecordFiles:
  """ArrayRecord files, opened (through grain's data source) when first read; grain workers get
  the paths and reopen them."""

  def __init__(self, paths):
    self.paths = list(paths)
    self._source = None

  def _records(self):
    if self._source is None:
      import grain  # imported where the records are first read
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    return self._source

  def __len__(self):
    return len(self._records())

  def __getstate__(self):
    return {**self.__dict__, "_source": None}


class TokenShards(_ArrayRecordFiles):
  """The converter's ArrayRecord shards of one folder: each record a document's int32 ids."""

  def __init__(self, paths, meta):
    super().__init__(paths)
    self.meta = meta  # the folder's tokens.json

  @property
  def tokenizer_sha256(self):
    return self.meta["tokenizer_sha256"]

  def __getitem__(self, index):
    return np.frombuffer(self._records()[index], np.int32)


def read_tokens_meta(folder):
  """The folder's tokens.json, or None when it has none; DataError when it is not one."""
  path = os.path.join(folder, TOKENS_META)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, "rb") as f:
      meta = json.loads(f.read().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"token shard description {path}: not JSON ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != TOKENS_FORMAT:
    raise DataError(f"token shard description {path}: not a {TOKENS_FORMAT!r} file")
  if meta.get("version") != TOKENS_VERSION:
    raise DataError(f"token shard description {path}: version {meta.get('version')!r}, this "
                    f"code reads version {TOKENS_VERSION} (convert the corpus again)")
  return meta


class JsonRecords(_ArrayRecordFiles):
  """ArrayRecord files whose records are UTF-8 JSON objects holding the text in `field`."""

  def __init__(self, paths, field):
    super().__init__(paths)
    self.field = field

  def __getitem__(self, index):
    raw = self._records()[index]
    try:
      record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      record = None
    if not isinstance(record, dict) or not isinstance(record.get(self.field), str):
      raise DataError(f"data files {', '.join(self.paths)} record {index}: expected a UTF-8 "
                      f"JSON object with a string field {self.field!r} (config.data.text_field)")
    return record[self.field]


class ParquetDocuments:
  """One Parquet file's string column `field`, decoded a row group at a time (a few cached).
  grain's prefetch threads read it at once: the file and the cache are used under a lock."""

  CACHED_ROW_GROUPS = 4

  def __init__(self, path, field):
    self.path = path
    self.field = field
    self._file = None
    self._cache = collections.OrderedDict()  # row group -> its texts
    self._lock = threading.Lock()
    metadata = self._parquet().metadata
    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    self.blocks = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else []
    self._length = int(sum(sizes))

  def _parquet(self):
    if self._file is None:
      import pyarrow.parquet as pq  # only runs that read Parquet need pyarrow
      self._file = pq.ParquetFile(
          epath.Path(self.path).open("rb") if storage.is_remote(self.path) else self.path)
    return self._file

  def __len__(self):
    return self._length

  def _row_group(self, group):
    with self._lock:
      if group not in self._cache:
        column = self._parquet().read_row_group(group, columns=[self.field]).column(0)
        self._cache[group] = column.to_pylist()
        if len(self._cache) > self.CACHED_ROW_GROUPS:
          self._cache.popitem(last=False)
      self._cache.move_to_end(group)
      return self._cache[group]

  def __getitem__(self, index):
    group = bisect.bisect_right(self.blocks, index) - 1
    return self._row_group(group)[index - self.blocks[group]] or ""  # a null reads as ""

  def __getstate__(self):  # grain workers reopen the file
    return {**self.__dict__, "_file": None, "_cache": None, "_lock": None}

  def __setstate__(self, state):
    self.__dict__.update(state, _cache=collections.OrderedDict(), _lock=threading.Lock())


def parquet_documents(path, field) -> ParquetDocuments:
  """The file's documents; DataError when it is not Parquet, has no rows, or has no string
  column `field`."""
  import pyarrow as pa
  try:
    documents = ParquetDocuments(path, field)
    schema = documents._parquet().schema_arrow
  except (pa.ArrowException, OSError) as e:
    raise DataError(f"data file {path}: not a readable Parquet file ({e})") from None
  if field not in schema.names or not (pa.types.is_string(schema.field(field).type)
                                       or pa.types.is_large_string(schema.field(field).type)):
    raise DataError(f"data file {path}: no string column {field!r} (config.data.text_field; "
                    f"columns: {', '.join(schema.names)})")
  if not len(documents):
    raise DataError(f"data file {path}: no documents")
  return documents


class Concatenated:
  """Several collections read as one, in order; `blocks` joins the parts' blocks (a part
  without blocks is one block)."""

  def __init__(self, parts):
    self.parts = list(parts)
    self._starts = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)

  def __len__(self):
    return int(self._starts[-1])

  def __getitem__(self, index):
    part = bisect.bisect_right(self._starts, index) - 1
    return self.parts[part][index - self._starts[part]]

  @property
  def blocks(self):
    if not any(has_blocks(p) for p in self.parts):
      return []
    return np.concatenate([
        start + (np.asarray(p.blocks) if has_blocks(p) else np.zeros(1, np.int64))
        for start, p in zip(self._starts[:-1], self.parts)
    ])


def has_blocks(documents) -> bool:
  """Whether `documents` is read in blocks (Parquet row groups) and is shuffled so."""
  return len(getattr(documents, "blocks", [])) > 0


def concatenated(parts):
  """`parts` as one collection: a list when every part is a list, else a Concatenated."""
  if len(parts) == 1:
    return parts[0]
  if all(isinstance(p, list) for p in parts):
    return [doc for p in parts for doc in p]
  return Concatenated(parts)


def token_parts(documents):
  """The TokenShards inside `documents` (a collection or a Concatenated of them)."""
  if isinstance(documents, TokenShards):
    return [documents]
  if isinstance(documents, Concatenated):
    return [t for p in documents.parts for t in token_parts(p)]
  return []
