"""The answer of a draft, read on device from token ids as `tasks.read_answer` reads it from text.

A draft's text is rebuilt from its token ids with a byte table of the tokenizer's pieces
(`PieceBytes`), then each checker's pattern is matched on those bytes with array operations:
`final_answer` (the number after the last `####`), `choice` (the letter of the last
`answer: <a-d>`), `true_false` (the last `answer: true|false`), `exact` (the whole text,
whitespace-normalised). A row's checker is an id: CHECKER_IDS[name], or TEXT (no answer: a
text window, scored by token overlap).

The host patterns run on Unicode text, these on UTF-8 bytes (`byte_text` says what counts as
whitespace and as a word character there). A draft whose answer touches a non-ASCII character or a
Unicode space may be read differently; the parity test (tests/test_answers.py) holds the two readers
equal on drafts of ASCII text, the bundled tasks' alphabet.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rasr_jax import tasks
from rasr_jax.reflection import byte_text

TEXT = 0
CHECKER_IDS = {name: index + 1 for index, name in enumerate(tasks.CHECKERS)}


@dataclasses.dataclass(frozen=True)
class PieceBytes:
  """The UTF-8 bytes each token id decodes to (`Tokenizer.piece_bytes` builds it)."""
  table: np.ndarray  # [V, L] uint8, L the longest piece
  lengths: np.ndarray  # [V] int32

  def text_bytes(self, target_len):
    """Capacity in bytes of a draft of `target_len` tokens (the width of answers and
    references)."""
    return target_len * self.table.shape[1]


def reference_bytes(checker: str, answer: str, width: int) -> tuple[np.ndarray, int]:
  """The answer `checker` reads in a reference `answer`, as ([width] uint8, length)."""
  read = tasks.read_answer(checker, answer)
  if read is None:
    raise ValueError(f"checker {checker!r} finds no answer in the reference {answer!r}")
  raw = read.encode()[:width]
  out = np.zeros((width,), np.uint8)
  out[:len(raw)] = np.frombuffer(raw, np.uint8)
  return out, len(read.encode())


def draft_bytes(draft, length, pieces: PieceBytes):
  """draft [B, Y] int, length [B] -> (text bytes [B, N] int32 zero-padded, byte count [B])."""
  rows, target_len = draft.shape
  table, lengths = jnp.asarray(pieces.table, jnp.int32), jnp.asarray(pieces.lengths)
  piece_len = table.shape[1]
  in_draft = jnp.arange(target_len)[None] < length[:, None]  # [B, Y]
  byte_valid = (jnp.arange(piece_len)[None, None] < lengths[draft][..., None]) & in_draft[..., None]
  return _compact(table[draft].reshape(rows, -1), byte_valid.reshape(rows, -1))  # [B, N]


def _compact(text, keep, first=None):
  """The bytes of text [B, N] where keep [B, N], packed left (after `first` [B] if given, a
  byte or 0 for none) -> ([B, N], [B] count)."""
  rows, width = text.shape
  lead = jnp.zeros((rows,), jnp.int32) if first is None else (first > 0).astype(jnp.int32)
  dest = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1 + lead[:, None], width)
  out = jnp.zeros_like(text)
  out = jax.vmap(lambda o, d, v: o.at[d].set(v, mode="drop"))(out, dest, text)
  if first is not None:
    out = out.at[:, 0].set(jnp.where(lead > 0, first, out[:, 0]))
  return out, jnp.sum(keep, axis=1) + lead


def _last(ok, width):
  """Index of the last True per row of ok [B, N] -> ([B], found [B])."""
  last = jnp.max(jnp.where(ok, jnp.arange(width)[None], -1), axis=1)
  return jnp.maximum(last, 0), last >= 0


def _final_answer(text, next_word, width):
  """`####\\s*(-?\\d[\\d,]*)`, last match; commas and leading zeros dropped."""
  starts = jnp.broadcast_to(jnp.arange(width)[None], text.shape)
  after = byte_text.follow(next_word, starts + 4, width)  # first non-space after `####`
  negative = byte_text.at(text, after) == ord("-")
  digits_from = after + negative
  ok = byte_text.spells(text, starts, "####") & byte_text.is_digit(byte_text.at(text, digits_from))
  last, found = _last(ok, width)
  lo = jnp.take_along_axis(digits_from, last[:, None], axis=1)  # [B, 1]
  negative = jnp.take_along_axis(negative, last[:, None], axis=1)[:, 0]
  number_end = byte_text.first_at_or_after(~(byte_text.is_digit(text) | (text == ord(","))), width)
  hi = jnp.take_along_axis(number_end, lo, axis=1)  # [B, 1]
  in_number = (starts >= lo) & (starts < hi)
  digit = in_number & byte_text.is_digit(text)
  keep = digit & (jnp.cumsum(digit & (text != ord("0")), axis=1) > 0)  # leading zeros dropped
  zero = ~jnp.any(keep, axis=1)
  keep = keep | (zero[:, None] & (starts == 0))  # "0": written below
  source = jnp.where(zero[:, None], ord("0"), text)
  answer, size = _compact(source, keep, jnp.where(negative & ~zero, ord("-"), 0))
  return found, answer, size


def _after_answer_colon(text, next_word, width):
  """For every start: whether `answer\\s*:` is spelled there (any case), and the first
  non-space after the colon."""
  starts = jnp.broadcast_to(jnp.arange(width)[None], text.shape)
  colon = byte_text.follow(next_word, starts + 6, width)
  ok = byte_text.spells(text, starts, "answer", ignore_case=True) & (byte_text.at(text, colon)
                                                                     == ord(":"))
  return ok, byte_text.follow(next_word, colon + 1, width)


def _choice(text, next_word, width):
  """`answer\\s*:\\s*\\(?([a-d])\\b`, any case, last match -> the lowercase letter."""
  ok, value = _after_answer_colon(text, next_word, width)
  value = value + (byte_text.at(text, value) == ord("("))
  letter = byte_text.lower(byte_text.at(text, value))
  ok &= (letter >= ord("a")) & (letter
                                <= ord("d")) & ~byte_text.is_word(byte_text.at(text, value + 1))
  last, found = _last(ok, width)
  answer = jnp.zeros_like(text).at[:,
                                   0].set(jnp.take_along_axis(letter, last[:, None], axis=1)[:, 0])
  return found, answer, jnp.ones_like(last)


def _true_false(text, next_word, width):
  """`answer\\s*:\\s*(true|false)\\b`, any case, last match -> "true" or "false"."""
  ok, value = _after_answer_colon(text, next_word, width)
  is_true = byte_text.spells(text, value, "true",
                             True) & ~byte_text.is_word(byte_text.at(text, value + 4))
  is_false = byte_text.spells(text, value, "false",
                              True) & ~byte_text.is_word(byte_text.at(text, value + 5))
  last, found = _last(ok & (is_true | is_false), width)
  is_true = jnp.take_along_axis(is_true, last[:, None], axis=1)[:, 0]
  true_bytes = jnp.asarray(list(b"true\0"), jnp.int32)
  false_bytes = jnp.asarray(list(b"false"), jnp.int32)
  word = jnp.where(is_true[:, None], true_bytes, false_bytes)  # [B, 5]
  answer = jnp.zeros_like(text).at[:, :5].set(word)
  return found, answer, jnp.where(is_true, 4, 5)


def _exact(text, count):
  """The whole text, runs of whitespace made one space, stripped."""
  width = text.shape[1]
  positions = jnp.arange(width)[None]
  space = byte_text.is_space(text) | (positions >= count[:, None])
  word = ~space
  seen = jnp.cumsum(word, axis=1) > 0
  later = jnp.flip(jnp.cumsum(jnp.flip(word, axis=1), axis=1), axis=1) > 0
  previous_word = jnp.concatenate([jnp.zeros_like(word[:, :1]), word[:, :-1]], axis=1)
  keep = word | (space & previous_word & seen & later & (positions < count[:, None]))
  answer, size = _compact(jnp.where(word, text, ord(" ")), keep)
  return size > 0, answer, size


def read(checker, text, count):
  """checker [B] int (CHECKER_IDS), text [B, N], count [B] -> (found [B] bool, answer [B, N]
  int32 zero-padded, answer length [B])."""
  width = text.shape[1]
  space = byte_text.is_space(text) | (jnp.arange(width)[None] >= count[:, None])
  next_word = byte_text.first_at_or_after(~space, width)
  text = jnp.where(jnp.arange(width)[None] < count[:, None], text, 0)
  readers = {
      "exact": lambda: _exact(text, count),
      "final_answer": lambda: _final_answer(text, next_word, width),
      "choice": lambda: _choice(text, next_word, width),
      "true_false": lambda: _true_false(text, next_word, width),
  }
  found = jnp.zeros(checker.shape, bool)
  answer, size = jnp.zeros_like(text), jnp.zeros_like(count)
  for name, reader in readers.items():
    mine = checker == CHECKER_IDS[name]
    f, a, s = reader()
    found = jnp.where(mine, f, found)
    answer = jnp.where(mine[:, None], a, answer)
    size = jnp.where(mine, s, size)
  return found, answer, size


def correct(text, count, checker, reference, reference_len):
  """Whether each draft's answer equals the reference's -> [B] bool (False for TEXT rows).

  text [B, N], count [B]: the drafts' bytes (`draft_bytes`); reference [B, N] the reference's
  answer bytes (`reference_bytes`).
  """
  found, answer, size = read(checker, text, count)
  width = text.shape[1]
  inside = jnp.arange(width)[None] < reference_len[:, None]
  same = jnp.all((answer == reference.astype(jnp.int32)) | ~inside, axis=1)
  return found & (checker != TEXT) & (size == reference_len) & same
