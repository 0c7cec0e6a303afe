"""Integer rounding for shapes: padded lengths, row counts, vocabulary sizes."""


def ceil_div(value: int, divisor: int) -> int:
  """The smallest integer >= value / divisor (positive divisor)."""
  return -(-value // divisor)


def round_up(value: int, multiple: int) -> int:
  """The smallest multiple of `multiple` >= value."""
  return ceil_div(value, multiple) * multiple
