"""Sentence spans of drafts, found from their token ids (the sentence scale of UFARSAP's
hierarchical critics).

A sentence ends after a token whose text, trailing whitespace aside, ends in `.`, `!` or `?`,
when the next token begins with whitespace or the draft ends there; and after any token that
holds a newline. So the dot of "3.5" ends nothing, while an abbreviation followed by a space
("e.g. this") reads as a sentence end.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from rasr_jax.reflection.answers import PieceBytes

_SPACE = b" \t\n\r\x0b\x0c"


@dataclasses.dataclass(frozen=True)
class SentenceMarks:
  """Per token id [V] bool: what its text says about sentence boundaries."""
  ends: np.ndarray  # ends in . ! or ? (trailing whitespace aside)
  breaks: np.ndarray  # holds a newline
  spaced: np.ndarray  # begins with whitespace


def sentence_marks(pieces: PieceBytes) -> SentenceMarks:
  """The marks of every token id from the tokenizer's piece bytes."""
  texts = [bytes(row[:n]) for row, n in zip(pieces.table, pieces.lengths)]
  return SentenceMarks(ends=np.asarray([t.rstrip(_SPACE)[-1:] in (b".", b"!", b"?") for t in texts
                                       ]),
                       breaks=np.asarray([b"\n" in t for t in texts]),
                       spaced=np.asarray([t[:1] in (b" ", b"\t", b"\n", b"\r") for t in texts]))


def sentence_index(draft, length, marks: SentenceMarks):
  """draft [B, Y] int, length [B] -> [B, Y] int32: the sentence (0, 1, ...) each draft token
  belongs to, -1 past the draft's length."""
  positions = jnp.arange(draft.shape[1])[None]
  valid = positions < length[:, None]
  ends, breaks, spaced = (jnp.asarray(m) for m in (marks.ends, marks.breaks, marks.spaced))
  next_spaced = jnp.concatenate([spaced[draft[:, 1:]], jnp.ones_like(draft[:, :1], bool)], 1)
  last = positions == length[:, None] - 1
  boundary = (ends[draft] & (next_spaced | last)) | breaks[draft]  # a sentence ends after t
  starts = jnp.concatenate([jnp.zeros_like(draft[:, :1]), boundary[:, :-1].astype(jnp.int32)], 1)
  return jnp.where(valid, jnp.cumsum(starts, axis=1), -1).astype(jnp.int32)
