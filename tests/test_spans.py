"""Sentence spans of drafts from token ids, on hand-made text through a trained tokenizer."""

import numpy as np
import pytest

from rasr_jax import tasks
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.reflection import spans

VOCAB = 400


@pytest.fixture(scope="module")
def tokenizer():
  return tok_lib.train([ex.text() for ex in tasks.bundled_corpus(0, 2000)], VOCAB)


def _sentences(tokenizer, text, pad_to=48):
  """The text of each sentence `sentence_index` finds in `text`'s tokens."""
  ids = tokenizer.encode(text)
  draft = np.zeros((1, pad_to), np.int32)
  draft[0, :len(ids)] = ids
  marks = spans.sentence_marks(tokenizer.piece_bytes(VOCAB))
  index = np.asarray(spans.sentence_index(draft, np.asarray([len(ids)]), marks))[0]
  assert (index[len(ids):] == -1).all() and (np.diff(index[:len(ids)]) >= 0).all()
  return [
      tokenizer.decode([t
                        for t, s in zip(ids, index)
                        if s == k]).strip()
      for k in range(index.max() + 1)
  ]


@pytest.mark.parametrize("text, sentences", [
    ("tom has 3 apples. he eats one! how many are left?",
     ["tom has 3 apples.", "he eats one!", "how many are left?"]),
    ("the sum is 3.5 now. done", ["the sum is 3.5 now.", "done"]),
    ("first line\nsecond line. third", ["first line", "second line.", "third"]),
    ("no end at all", ["no end at all"]),
    ("ends with a dot.", ["ends with a dot."]),
])
def test_sentences_from_token_ids(tokenizer, text, sentences):
  assert _sentences(tokenizer, text) == sentences


def test_padding_and_truncated_drafts(tokenizer):
  """A draft cut after a sentence's dot ends that sentence there; padding is -1."""
  ids = tokenizer.encode("one. two. three.")
  marks = spans.sentence_marks(tokenizer.piece_bytes(VOCAB))
  cut = ids.index(tokenizer.encode("one.")[-1]) + 1  # through the first dot
  draft = np.zeros((2, 16), np.int32)
  draft[0, :len(ids)], draft[1, :cut] = ids, ids[:cut]
  index = np.asarray(spans.sentence_index(draft, np.asarray([len(ids), cut]), marks))
  assert index[0, :len(ids)].max() == 2 and (index[0, len(ids):] == -1).all()
  assert (index[1, :cut] == 0).all() and (index[1, cut:] == -1).all()
