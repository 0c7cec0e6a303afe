"""The grain pipeline: row streams over disjoint document shards, tokenized, packed, batched.

The global batch of B rows comes from S row streams (`data.streams`). Stream s shuffles the
documents with the seed, takes every S-th (from s), tokenizes them (each ending in `<eos>`),
concatenates them and cuts rows of seq_len + 1 tokens (a document longer than a row continues
in the next row); it fills B / S rows of every batch. Process p of n reads streams
p S / n .. (p + 1) S / n, so each epoch visits every document exactly once across processes,
and the global batch does not depend on how many processes read it. The iterator's state is
small JSON and is checkpointed.
"""

import json

import grain
import numpy as np

from rasr_jax.data.sources import DataError


class _Tokenize(grain.transforms.Map):

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  def map(self, text):
    ids = self._tokenizer.encode(text) + [self._tokenizer.eos_id]
    return {"tokens": np.asarray(ids, np.int32)}


def _tokens_only(row):
  return row["tokens"]


def _stream(documents, tokenizer, *, seq_len, rows, seed, index, count):
  """Stream `index` of `count`: [rows, seq_len + 1] batches from every count-th document."""
  ds = (grain.MapDataset.source(documents).shuffle(seed=seed)[index::count].repeat(None).map(
      _Tokenize(tokenizer)).to_iter_dataset())
  ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len + 1})
  return ds.map(_tokens_only).batch(rows, drop_remainder=True)


def _side_by_side(batches):
  return np.concatenate(batches, axis=0)


def make_dataset(documents,
                 tokenizer,
                 *,
                 seq_len,
                 global_batch,
                 seed,
                 streams,
                 process_index=0,
                 process_count=1,
                 num_workers=0):
  """An IterDataset of this process's [global_batch / process_count, seq_len + 1] int32 rows."""
  if streams % process_count or global_batch % streams:
    raise DataError(f"{streams} data streams must be a multiple of the {process_count} "
                    f"processes and divide the batch of {global_batch}")
  if len(documents) < streams:
    raise DataError(f"{len(documents)} documents cannot feed {streams} data streams")
  per_process = streams // process_count
  first = process_index * per_process
  parts = [
      _stream(documents,
              tokenizer,
              seq_len=seq_len,
              rows=global_batch // streams,
              seed=seed,
              index=s,
              count=streams) for s in range(first, first + per_process)
  ]
  ds = parts[0] if per_process == 1 else grain.experimental.ZipIterDataset(parts).map(_side_by_side)
  if num_workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


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
