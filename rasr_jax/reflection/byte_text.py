"""Array operations on a draft's text as UTF-8 bytes ([B, N] int32, zero past its end): the
primitives the on-device readers (`answers.py`, `working.py`) match patterns with.

Whitespace is ASCII whitespace and \\x1c-\\x1f; a digit is an ASCII digit; a word character
(for `\\b`) is an ASCII letter, digit or `_`, or any non-ASCII byte; lowercasing changes ASCII
letters only. Python's `re` and `str.lower` on the host also know Unicode spaces, digits and
case mappings (a no-break space, an Arabic-Indic digit, the Kelvin sign lowercased to `k`), so
text that touches such characters may be read differently there.
"""

import jax
import jax.numpy as jnp


def clipped_at(table, index):
  """table [B, N] at index [B, M], the index clipped into [0, N)."""
  return jnp.take_along_axis(table, jnp.clip(index, 0, table.shape[1] - 1), axis=1)


def at(text, index):
  """text [B, N] at index [B, ...] (0 outside the text)."""
  flat = index.reshape(index.shape[0], -1)
  inside = (flat >= 0) & (flat < text.shape[1])
  return jnp.where(inside, clipped_at(text, flat), 0).reshape(index.shape)


def lower(c):
  return jnp.where((c >= 65) & (c <= 90), c + 32, c)


def is_space(c):
  return (c == 32) | ((c >= 9) & (c <= 13)) | ((c >= 28) & (c <= 31))


def is_digit(c):
  return (c >= 48) & (c <= 57)


def is_word(c):
  letter = (lower(c) >= 97) & (lower(c) <= 122)
  return letter | is_digit(c) | (c == 95) | (c >= 128)


def first_at_or_after(keep, width):
  """[B, N] bool -> [B, N]: the first index >= i where `keep` holds (width if none)."""
  index = jnp.where(keep, jnp.arange(width)[None], width)
  return jax.lax.cummin(index, axis=1, reverse=True)


def follow(table, index, width):
  """table [B, N] looked up at index [B, N] (width past the end)."""
  return jnp.where(index < width, at(table, index), width)


def spells(text, start, word, ignore_case=False):
  """Whether `word` (str) is spelled at every start [B, N] of text."""
  hit = jnp.ones(start.shape, bool)
  for offset, char in enumerate(word.encode()):
    got = at(text, start + offset)
    hit &= (lower(got) if ignore_case else got) == char
  return hit
