"""Supervised fine-tuning (`--mode=sft`): the training step of pretraining on packed examples
whose loss counts only the responses.

Records: `sft.files` (chat.py's forms), held out: `sft.eval_files`. Each example is encoded at
start-up (an example longer than a row, or a bad record, is refused there, naming file and
line) and packed whole: every row holds whole examples (grain's first-fit packing, padding the
rest of the row), each with its own segment id, so packed examples never attend to each other
and positions restart per example. Row streams, resume and the batch's independence from the
process count are pretraining's (data/pipeline.py).
"""

import dataclasses
import functools
import hashlib

import grain
import jax
import numpy as np
from absl import logging

from rasr_jax import config as config_lib
from rasr_jax.data import chat, pipeline, sources
from rasr_jax.training import loop


class _Examples:
  """Encoded examples as grain reads them: {"tokens", "loss_mask"} per index."""

  def __init__(self, examples):
    self._examples = examples

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    example = self._examples[index]
    return {"tokens": example.tokens, "loss_mask": example.loss_mask}


def _row(packed):
  return {
      "tokens": packed["tokens"],
      "segment_ids": packed["tokens_segment_ids"],
      "loss_mask": packed["loss_mask"]
  }


def make_dataset(examples,
                 *,
                 seq_len,
                 global_batch,
                 seed,
                 streams,
                 process_index=0,
                 process_count=1,
                 num_workers=0):
  """An IterDataset of this process's batches: {"tokens", "segment_ids", "loss_mask"}, each
  [global_batch / process_count, seq_len + 1]; padding has segment id 0 and no loss."""
  local_streams = pipeline.process_streams(streams, global_batch, process_index, process_count)
  if len(examples) < streams:
    raise sources.DataError(f"{len(examples)} examples cannot feed {streams} data streams")
  rows = global_batch // streams
  length = {"tokens": seq_len + 1, "loss_mask": seq_len + 1}

  def stream(index):
    ds = grain.MapDataset.source(_Examples(examples)).shuffle(seed=seed)[index::streams]
    ds = ds.repeat(None).to_iter_dataset()
    ds = grain.experimental.FirstFitPackIterDataset(ds,
                                                    length_struct=length,
                                                    num_packing_bins=rows,
                                                    shuffle_bins=False)
    return ds.map(_row).batch(rows, drop_remainder=True)

  return pipeline.side_by_side([stream(s) for s in local_streams], num_workers)


def _fingerprint(dialogues):
  digest = hashlib.sha256(b"sft")
  for dialogue in dialogues:
    digest.update(repr(dialogue).encode())
  return digest.hexdigest()


def _texts(dialogues):
  """The records' text (for training a tokenizer when there is none)."""
  return ["\n".join(turn.content for turn in d.turns) for d in dialogues]


def training_data(config) -> loop.TrainingData:
  """SFT's TrainingData: `sft.files`, held out `sft.eval_files` (none when empty)."""
  records = chat.read_records(config.sft.files, "sft.files", chat.sft_dialogue)
  held_out = (chat.read_records(config.sft.eval_files, "sft.eval_files", chat.sft_dialogue)
              if config.sft.eval_files else None)
  corpus = sources.single_corpus(_texts(records), _fingerprint(records))

  def encoded(tokenizer, dialogues):
    return [chat.encode_checked(d, tokenizer, config.data.seq_len + 1) for d in dialogues]

  def options(num_workers):
    return dict(seq_len=config.data.seq_len,
                global_batch=config.train.batch_size,
                seed=config.seed,
                streams=pipeline.stream_count(config.data),
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                num_workers=num_workers)

  def batches(tokenizer, pieces, num_workers):
    del pieces  # SFT reads no answers
    examples = encoded(tokenizer, records)
    logging.info("SFT data: %s", _token_counts(examples))
    return make_dataset(examples, **options(num_workers))

  def held_out_batches(tokenizer, pieces):
    del pieces
    if held_out is None:
      return None
    examples = encoded(tokenizer, held_out)
    return lambda: make_dataset(examples, **options(0))

  return loop.TrainingData(corpus, functools.partial(loop.packed_rows, document_masking=True),
                           batches, held_out_batches)


def _token_counts(examples) -> dict:
  """Examples, tokens and response tokens of encoded examples."""
  return {
      "examples": len(examples),
      "tokens": int(sum(len(e.tokens) for e in examples)),
      "response_tokens": int(sum(np.sum(e.loss_mask) for e in examples))
  }


def train(config, workdir, *, stop_at_step=None):
  """Fine-tunes (or resumes) on `sft.files` in `workdir`, from config.init_from; reflection is
  off (the loss is the responses' cross-entropy; a RASR checkpoint's heads are left out)."""
  if not config.sft.files:
    raise config_lib.ConfigError("--mode=sft needs config.sft.files (.jsonl records)")
  config = dataclasses.replace(config, reflect=dataclasses.replace(config.reflect, enabled=False))
  return loop.train(config, workdir, data=training_data(config), stop_at_step=stop_at_step)
