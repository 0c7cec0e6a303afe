"""The grain pipeline: row streams over disjoint document shards, tokenized, packed, batched.

The global batch of B rows comes from S row streams (`data.streams`). Stream s shuffles the
documents with the seed (`document_order`), takes every S-th (from s), tokenizes them
(`encode_document`: each starting as a prompt does and ending in `<eos>`; token shards are
already so), concatenates them and cuts rows of
seq_len + 1 tokens (a document longer than a row continues in the next row), each token with
the segment id of its document in the row (grain's); it fills B / S rows of every batch.
Process p of n reads streams p S / n .. (p + 1) S / n, so each epoch visits every document
exactly once across processes, and the global batch does not depend on how many processes read
it. The iterator's state is small JSON and is checkpointed. A mixture (`data.mixture`) does
this for each component and draws documents from the components by their weights (grain's
deterministic `mix`), each component visiting its documents once per its own epoch.

With question/answer rows (`qa_rows` per global batch) each stream also shuffles the encoded
records (`data/qa.py`), takes every S-th and fills qa_rows / S of them per batch; a batch is then
{"tokens": [rows, seq_len + 1], "segment_ids": [rows, seq_len + 1], "qa": {field: [qa rows,
...]}}, else without "qa". Both parts live in the one iterator state, so resume is exact for
both.
"""

import ctypes
import json
import os
import signal
import sys

import grain
import jax
import numpy as np

from rasr_jax.data import documents as docs_lib
from rasr_jax.data.sources import Corpus, DataError


class _Tokenize(grain.transforms.Map):
  """A document's tokens: text encoded, token shards' ids as they are."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  def map(self, document):
    if isinstance(document, np.ndarray):
      return {"tokens": document}
    ids = self._tokenizer.encode_document(document)
    return {"tokens": np.asarray(ids, np.int32)}


class _BlockShuffled(grain.MapDataset):
  """Documents read in blocks (Parquet row groups), shuffled anew each epoch as grain's shuffle
  is (an index past the length is a later epoch): the blocks in random order and each block's
  documents in random order."""

  def __init__(self, documents, seed):
    super().__init__()
    self._documents = documents
    self._seed = seed
    self._bounds = np.append(np.asarray(documents.blocks), len(documents))
    self._epoch_order = (None, None)  # (epoch, its order): the one a stream is reading

  def __len__(self):
    return len(self._documents)

  def __str__(self):
    return "BlockShuffled"

  def _order(self, epoch):
    if self._epoch_order[0] != epoch:
      rng = np.random.default_rng((self._seed, epoch))
      bounds = self._bounds
      order = np.concatenate([
          bounds[b] + rng.permutation(bounds[b + 1] - bounds[b])
          for b in rng.permutation(len(bounds) - 1)
      ])
      self._epoch_order = (epoch, order)
    return self._epoch_order[1]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, index = divmod(index, len(self))
    return self._documents[int(self._order(epoch)[index])]


def document_order(documents, seed) -> grain.MapDataset:
  """`documents` shuffled with `seed`, anew each epoch: one by one (grain's shuffle), or, for
  collections read in blocks (Parquet row groups), the blocks in random order and each block's
  documents in random order, so that a stream decodes a block once rather than once per
  document."""
  if not docs_lib.has_blocks(documents):
    return grain.MapDataset.source(documents).shuffle(seed=seed)
  return _BlockShuffled(documents, seed)


class _Records:
  """Encoded question/answer rows ({field: [n, ...]}) as a sequence of per-row dicts."""

  def __init__(self, arrays):
    self._arrays = arrays

  def __len__(self):
    return len(self._arrays["checker"])

  def __getitem__(self, index):
    return {name: array[index] for name, array in self._arrays.items()}


QA_SEED_OFFSET = 1  # the records' shuffle seed differs from the documents'


def _packed(row):
  """A packed row: its tokens and which document each is from (grain's segment ids)."""
  return {"tokens": row["tokens"], "segment_ids": row["tokens_segment_ids"]}


def _with_qa(parts):
  packed, qa = parts
  return {**packed, "qa": qa}


def _stream(corpus, tokenizer, *, seq_len, rows, seed, index, count, qa, qa_rows):
  """Stream `index` of `count`: batches of [rows, seq_len + 1] tokens from every count-th
  document (of each component), and of `qa_rows` question/answer rows from every count-th
  record of `qa`."""
  components = [
      document_order(documents, seed + c)[index::count].repeat(None)
      for c, documents in enumerate(corpus.components)
  ]
  ds = components[0] if len(components) == 1 else grain.MapDataset.mix(
      components, list(corpus.weights))
  ds = ds.map(_Tokenize(tokenizer)).to_iter_dataset()
  ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len + 1})
  ds = ds.map(_packed).batch(rows, drop_remainder=True)
  if not qa_rows:
    return ds
  records = (grain.MapDataset.source(
      _Records(qa)).shuffle(seed=seed + QA_SEED_OFFSET)[index::count].repeat(None).batch(
          qa_rows, drop_remainder=True).to_iter_dataset())
  return grain.experimental.ZipIterDataset([ds, records]).map(_with_qa)


def _concatenated(batches):
  return jax.tree.map(lambda *parts: np.concatenate(parts, axis=0), *batches)


def make_dataset(corpus: Corpus,
                 tokenizer,
                 *,
                 seq_len,
                 global_batch,
                 seed,
                 streams,
                 process_index=0,
                 process_count=1,
                 num_workers=0,
                 qa=None,
                 qa_rows=0):
  """An IterDataset of this process's batches of `corpus`: {"tokens": [global_batch / process_count,
  seq_len + 1] int32, "segment_ids": the same shape (see packing.PackedRows)} and, with
  `qa_rows` question/answer rows per global batch from the encoded records `qa`, "qa": {field:
  [qa_rows / process_count, ...]}."""
  local_streams = process_streams(streams, global_batch, process_index, process_count)
  for documents in corpus.components:
    if len(documents) < streams:
      raise DataError(f"{len(documents)} documents cannot feed {streams} data streams")
  if qa_rows and qa_rows % streams:
    raise DataError(f"{qa_rows} question/answer rows per batch cannot be split over {streams} "
                    "data streams (set data.streams to a divisor)")
  if qa_rows and len(qa["checker"]) < qa_rows:
    raise DataError(f"{len(qa['checker'])} question/answer records cannot fill {qa_rows} "
                    "reflection rows per batch")
  return side_by_side([
      _stream(corpus,
              tokenizer,
              seq_len=seq_len,
              rows=global_batch // streams,
              seed=seed,
              index=s,
              count=streams,
              qa=qa,
              qa_rows=qa_rows // streams) for s in local_streams
  ], num_workers)


def stream_count(data_cfg) -> int:
  """The row streams of a run: `data.streams`, default one per process."""
  return data_cfg.streams or jax.process_count()


def process_streams(streams, global_batch, process_index, process_count) -> range:
  """The row streams this process reads (p S / n .. (p + 1) S / n); DataError when the streams
  do not split over the processes or the batch."""
  if streams % process_count or global_batch % streams:
    raise DataError(f"{streams} data streams must be a multiple of the {process_count} "
                    f"processes and divide the batch of {global_batch}")
  per_process = streams // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def side_by_side(streams, num_workers=0):
  """One batch from the batches of each of `streams` (IterDatasets), rows concatenated; read
  ahead by `num_workers` grain worker processes when > 0."""
  ds = streams[0] if len(streams) == 1 else grain.experimental.ZipIterDataset(streams).map(
      _concatenated)
  if num_workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                        worker_init_fn=_end_with_the_trainer)
  return ds


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends


def _end_with_the_trainer(worker_index, worker_count):
  """Runs in each grain worker: the worker is killed when the trainer that started it ends, so a
  trainer killed without cleanup (SIGKILL, a crash) leaves no workers behind (Linux only:
  without it they were seen to outlive a killed trainer by minutes, holding its output pipes)."""
  del worker_index, worker_count
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the trainer ended before the request took effect
      os.kill(os.getpid(), signal.SIGKILL)


def _slices_as_tuples(state):
  """`state` with every packing `remainder_slices` entry a tuple again (JSON made it a list)."""
  if isinstance(state, dict):
    return {
        key: ({
            k: tuple(v) for k, v in value.items()
        } if key == "remainder_slices" else _slices_as_tuples(value)
             ) for key, value in state.items()
    }
  if isinstance(state, list):
    return [_slices_as_tuples(item) for item in state]
  return state


class ResumableIterator:
  """The dataset's iterator as grain's checkpoint handler saves it: state as JSON bytes.

  On restore the packing slices become tuples again: grain's concat-then-split compares them
  with a tuple, so after a plain JSON round trip an empty remainder reads as a part-document
  and one document would be skipped (tested by `test_exactly_once_per_epoch_...`).
  """

  def __init__(self, dataset):
    self._iterator = iter(dataset)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._iterator)

  def get_state(self) -> bytes:
    return json.dumps(self._iterator.get_state()).encode()

  def set_state(self, state: bytes):
    self._iterator.set_state(_slices_as_tuples(json.loads(state)))

  def start_prefetch(self):
    self._iterator.start_prefetch()
