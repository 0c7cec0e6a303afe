"""The working of a draft, checked on device from its bytes as `tasks.check_answer` checks its
text (RASR.md §5: the logic and relevance of question/answer rows).

`steps`: the draft's `a op b = c` steps and how many are right. The host reads them with one
pattern, found left to right without overlap: a run of integers (not after a digit or `.`; an
integer's first 12 digits, a longer one ending the run) joined by `+ - *`, optionally followed by
`= r` (r an integer of at most 12 digits, not followed by more digits or a decimal part); a step is
a run with an operator and a result, right when the run's value (`*` binding tighter) is r. Here a
reverse scan over the bytes evaluates the run that starts at each integer, and a forward scan keeps
the runs the host's left-to-right search finds. Python evaluates with exact integers; here every
value is taken modulo two primes below 2^15 (so products stay inside int32): a wrong step reads as
right only if both residues agree by chance, about one in 10^9.

`quantities_used`: how many of the question's quantities (`tasks.quantities`, written into the
row as bytes) the draft mentions: as a number (rows read by `final_answer`: a maximal digit
run, leading zeros dropped) or as a word (other checkers: a maximal run of [a-z0-9] in the
lowercased text).
"""

import jax
import jax.numpy as jnp

from rasr_jax.reflection import answers, byte_text

_MAX_DIGITS = 12  # the host pattern's longest integer
_PRIMES = (32749, 32719)


def _residues(text, start, digits):
  """The value of `digits` [B, N] digits of text from each start [B, N], modulo each prime ->
  tuple of [B, N] int32."""
  values = [jnp.zeros(start.shape, jnp.int32) for _ in _PRIMES]
  for offset in range(_MAX_DIGITS):
    digit = byte_text.at(text, start + offset) - ord("0")
    inside = offset < digits
    values = [jnp.where(inside, (v * 10 + digit) % p, v) for v, p in zip(values, _PRIMES)]
  return values


def steps(text):
  """text [B, N] (zero past each draft's end) -> (steps [B] int32, right steps [B] int32)."""
  width = text.shape[1]
  pos = jnp.broadcast_to(jnp.arange(width)[None], text.shape)
  digit = byte_text.is_digit(text)
  before = byte_text.at(text, pos - 1)
  start = digit & ~byte_text.is_digit(before) & (before != ord("."))  # [B, N] an integer begins
  run_end = byte_text.first_at_or_after(~digit, width)
  taken = jnp.minimum(run_end - pos, _MAX_DIGITS)  # an operand's digits
  value = _residues(text, pos, taken)
  next_solid = byte_text.first_at_or_after(~byte_text.is_space(text), width)
  after = byte_text.follow(next_solid, pos + taken, width)  # first non-space after the integer
  op = byte_text.at(text, after)
  operand = byte_text.follow(next_solid, after + 1, width)
  linked = ((op == ord("+")) | (op == ord("-")) | (op == ord("*"))) & byte_text.is_digit(
      byte_text.at(text, operand))  # the run goes on: the next start is `operand`
  # `= r` after the integer: r's sign, first digit, length and value.
  negative = byte_text.at(text, operand) == ord("-")
  first = operand + negative
  length = byte_text.follow(run_end, first, width) - first
  past = first + length
  decimal = (byte_text.at(text, past) == ord(".")) & byte_text.is_digit(byte_text.at(
      text, past + 1))
  has_result = ((op == ord("=")) & byte_text.is_digit(byte_text.at(text, first)) &
                (length <= _MAX_DIGITS) & ~decimal)
  result = [
      jnp.where(negative, (p - r) % p, r)
      for r, p in zip(_residues(text, first, jnp.minimum(length, _MAX_DIGITS)), _PRIMES)
  ]
  match_end_alone = jnp.where(has_result, past, pos + taken)

  def evaluate(carry, at):
    """Right to left: the run from each start, as (first term, rest) of its value per prime,
    whether it holds an operator, its result and where its match ends."""
    (term, rest, has_op, result_ok, result_value, end) = carry
    (is_start, is_linked, op, value, alone_ok, alone_value, alone_end) = at
    times, plus, minus = op == ord("*"), op == ord("+"), op == ord("-")
    new_term, new_rest = [], []
    for t, r, v, p in zip(term, rest, value, _PRIMES):
      linked_term = jnp.where(times, (v * t) % p, v)
      linked_rest = jnp.where(plus, (t + r) % p, jnp.where(minus, (r - t) % p, r))
      new_term.append(jnp.where(is_linked, linked_term, v))
      new_rest.append(jnp.where(is_linked, linked_rest, 0))
    out = (new_term, new_rest, is_linked, jnp.where(is_linked, result_ok, alone_ok),
           [jnp.where(is_linked, rv, av) for rv, av in zip(result_value, alone_value)],
           jnp.where(is_linked, end, alone_end))
    carry = jax.tree.map(lambda new, old: jnp.where(is_start, new, old), out, carry)
    return carry, out

  rows = text.shape[0]
  zeros = [jnp.zeros((rows,), jnp.int32) for _ in _PRIMES]
  init = (zeros, zeros, jnp.zeros((rows,), bool), jnp.zeros(
      (rows,), bool), zeros, jnp.zeros((rows,), jnp.int32))
  by_position = jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0),
                             (start, linked, op, value, has_result, result, match_end_alone))
  _, (term, rest, has_op, result_ok, result_value, match_end) = jax.lax.scan(evaluate,
                                                                             init,
                                                                             by_position,
                                                                             reverse=True,
                                                                             unroll=8)
  is_step = has_op & result_ok  # [N, B]
  right = is_step
  for t, r, v, p in zip(term, rest, result_value, _PRIMES):
    right &= (t + r) % p == v

  def search(resume, at):
    """Left to right: a match starts at an integer the previous match does not cover."""
    index, is_start, end = at
    found = is_start & (index >= resume)
    return jnp.where(found, end, resume), found

  _, found = jax.lax.scan(search,
                          jnp.zeros((rows,), jnp.int32),
                          (jnp.arange(width), jnp.moveaxis(start, 1, 0), match_end),
                          unroll=8)
  return (jnp.sum(found & is_step, axis=0,
                  dtype=jnp.int32), jnp.sum(found & right, axis=0, dtype=jnp.int32))


def quantities_used(text, checker, quantity, quantity_len):
  """text [B, N] (zero past each draft's end), checker [B] (answers.CHECKER_IDS), quantity
  [B, Q, W] uint8 and quantity_len [B, Q] (0: none) -> (mentioned [B] int32, quantities [B])."""
  width = text.shape[1]
  pos = jnp.broadcast_to(jnp.arange(width)[None], text.shape)
  numbers = (checker == answers.CHECKER_IDS["final_answer"])[:, None]
  lowered = byte_text.lower(text)
  digit = byte_text.is_digit(text)
  word_char = ((lowered >= ord("a")) & (lowered <= ord("z"))) | digit
  inside = jnp.where(numbers, digit, word_char)
  begins = inside & ~byte_text.at(inside.astype(jnp.int32), pos - 1).astype(bool)
  end = byte_text.first_at_or_after(~inside, width)
  significant = byte_text.first_at_or_after(~digit | (text != ord("0")), width)
  mention = jnp.where(numbers, jnp.where(significant == end, end - 1, significant), pos)
  span = end - mention  # [B, N] the mention's length at each `begins`
  same = (begins[:, None] & (span[:, None] == quantity_len[..., None]))  # [B, Q, N]
  for offset in range(quantity.shape[-1]):
    got = byte_text.at(lowered, mention + offset)  # [B, N]
    want = quantity[..., offset].astype(jnp.int32)  # [B, Q]
    same &= (offset >= quantity_len[..., None]) | (got[:, None] == want[..., None])
  wanted = quantity_len > 0
  used = jnp.any(same, axis=-1) & wanted
  return jnp.sum(used, axis=-1, dtype=jnp.int32), jnp.sum(wanted, axis=-1, dtype=jnp.int32)
