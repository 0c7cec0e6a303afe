"""The working of a draft, checked on device from its bytes as `tasks.check_answer` checks its
text (RASR.md §5: the logic and relevance of question/answer rows).

`steps`: the draft's `a op b = c` steps and how many are right. The host reads them with one
pattern, found left to right without overlap: a run of integers (not after a digit or `.`; an
integer's first 12 digits, a longer one ending the run) joined by `+ - *`, optionally followed by
`= r` (r an integer of at most 12 digits, not followed by more digits or a decimal part); a step is
a run with an operator and a result, right when the run's value (`*` binding tighter) is r. Here
every step is found without a sequential pass over the bytes: the runs are linked lists of integers,
whose values compose as affine maps by pointer doubling, and which run's head the host's search
skips (consumed as the previous match's result) is a one-bit recurrence along chains of runs,
composed the same way; log2(N) rounds of gathers each. Python evaluates with exact integers; here
every value is taken modulo two primes below 2^15 (so products stay inside int32): a wrong step
reads as right only if both residues agree by chance, about one in 10^9.

`quantities_used`: how many of the question's quantities (`tasks.quantities`, written into the
row as bytes) the draft mentions: as a number (rows read by `final_answer`: a maximal digit
run, leading zeros dropped) or as a word (other checkers: a maximal run of [a-z0-9] in the
lowercased text).
"""

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


def _suffix_values(linked, op, value, operand):
  """The value of the run from each integer to the end of its run, per prime -> list of [B, N].

  Each integer maps (first term, rest) of the run after it to its own: `a * ...` multiplies the
  first term, `a + ...` / `a - ...` start a new one, the last integer is (a, 0). The maps are
  affine ([[a11, a12], [a21, a22]], [b1, b2]), so pointer doubling along the run composes them
  in log2(N) rounds."""
  width = linked.shape[1]
  times, plus, minus = op == ord("*"), op == ord("+"), op == ord("-")
  jump = jnp.where(linked, operand, jnp.arange(width)[None])
  values = []
  for v, p in zip(value, _PRIMES):
    zero, one = jnp.zeros_like(v), jnp.ones_like(v)
    maps = (
        jnp.where(linked & times, v, zero),  # a11
        zero,  # a12
        jnp.where(plus, one, jnp.where(minus, p - 1, zero)) * linked,  # a21
        jnp.where(linked, one, zero),  # a22
        jnp.where(linked & times, zero, v),  # b1
        zero,  # b2
    )
    pointer = jump
    for _ in range(max(1, (width - 1).bit_length())):
      later = [byte_text.clipped_at(m, pointer) for m in maps]
      maps = _compose(maps, later, p)
      pointer = byte_text.clipped_at(pointer, pointer)
    values.append((maps[4] + maps[5]) % p)
  return values


def _compose(outer, inner, p):
  """outer after inner, two affine maps of (first term, rest) modulo p."""
  a11, a12, a21, a22, b1, b2 = outer
  c11, c12, c21, c22, d1, d2 = inner
  mul = lambda x, y: (x * y) % p
  return ((mul(a11, c11) + mul(a12, c21)) % p, (mul(a11, c12) + mul(a12, c22)) % p,
          (mul(a21, c11) + mul(a22, c21)) % p, (mul(a21, c12) + mul(a22, c22)) % p,
          (mul(a11, d1) + mul(a12, d2) + b1) % p, (mul(a21, d1) + mul(a22, d2) + b2) % p)


def steps(text):
  """text [B, N] (zero past each draft's end) -> (steps [B] int32, right steps [B] int32)."""
  rows, width = text.shape
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
  linked = start & ((op == ord("+")) | (op == ord("-")) | (op == ord("*"))) & byte_text.is_digit(
      byte_text.at(text, operand))  # the run goes on: its next integer is at `operand`
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
  run_value = _suffix_values(linked, op, value, operand)
  # Runs: a head is an integer no other integer links to; its run ends at the first integer at
  # or after it that links to none, whose `= r` is the run's result.
  row = jnp.arange(rows)[:, None]
  linked_to = jnp.zeros((rows, width + 1),
                        bool).at[row, jnp.where(linked, operand, width)].set(True)[:, :width]
  head = start & ~linked_to
  last = byte_text.first_at_or_after(start & ~linked, width)
  result_ok = byte_text.clipped_at(has_result, last) & head
  result_at = byte_text.clipped_at(first, last)  # the head of the next run when result_ok
  # The host's search skips a run's head when the previous match consumed it as its result, and
  # then matches from the run's second integer. A run's match exists unless its head was
  # consumed and it has one integer; its result is consumed only if the match exists, so
  # "consumed" follows x(next) = result_ok and (not x or linked), along chains of runs, composed
  # as functions of one bit (their values at False and True) by pointer doubling.
  previous = jnp.full((rows, width + 1), -1,
                      jnp.int32).at[row, jnp.where(result_ok, result_at, width)].set(pos)[:, :width]
  # x(head) as a function of x(pointer's head): its value when that one was free / consumed.
  if_free = previous >= 0  # the previous run's match exists and consumes this head
  if_consumed = if_free & byte_text.clipped_at(linked, previous)
  pointer = previous
  for _ in range(max(1, (width - 1).bit_length())):
    more = pointer >= 0
    earlier_free = byte_text.clipped_at(if_free, pointer)
    earlier_consumed = byte_text.clipped_at(if_consumed, pointer)
    if_free, if_consumed = (jnp.where(more, jnp.where(earlier_free, if_consumed, if_free), if_free),
                            jnp.where(more, jnp.where(earlier_consumed, if_consumed, if_free),
                                      if_consumed))
    pointer = jnp.where(more, byte_text.clipped_at(pointer, pointer), pointer)
  consumed = if_free & head  # every chain starts at a run whose head nothing consumed
  second = operand  # a linked integer's next one: where a run's match starts when consumed
  second_linked = byte_text.clipped_at(linked, second)
  is_step = head & result_ok & linked & jnp.where(consumed, second_linked, True)
  right = is_step
  for v, r in zip(run_value, result):
    matched = jnp.where(consumed, byte_text.clipped_at(v, second), v)
    right &= matched == byte_text.clipped_at(r, last)
  return jnp.sum(is_step, axis=1, dtype=jnp.int32), jnp.sum(right, axis=1, dtype=jnp.int32)


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
