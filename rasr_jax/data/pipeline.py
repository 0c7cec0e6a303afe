"""The grain pipeline: shuffle documents with the seed, shard by process, tokenize, pack, batch.

Documents are shuffled per epoch and split by process, so every process reads a disjoint share
and each epoch visits every document exactly once across processes. Tokenized documents (each
ending in `<eos>`) are concatenated and cut into rows of seq_len + 1 tokens; a document longer
than a row continues in the next row. The iterator's state is small JSON and is checkpointed.
"""

import grain
import numpy as np


class _Tokenize(grain.transforms.Map):

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  def map(self, text):
    ids = self._tokenizer.encode(text) + [self._tokenizer.eos_id]
    return {"tokens": np.asarray(ids, np.int32)}


def _tokens_only(row):
  return row["tokens"]


def make_dataset(documents, tokenizer, *, seq_len, local_batch, seed, shard_index=0,
                 shard_count=1, num_workers=0):
  """An IterDataset of [local_batch, seq_len + 1] int32 token rows."""
  if len(documents) < shard_count:
    raise ValueError(f"{len(documents)} documents cannot be shared by {shard_count} processes")
  ds = (grain.MapDataset.source(documents)
        .shuffle(seed=seed)[shard_index::shard_count]
        .repeat(None)
        .map(_Tokenize(tokenizer))
        .to_iter_dataset())
  ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len + 1})
  ds = ds.map(_tokens_only).batch(local_batch, drop_remainder=True)
  if num_workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds
