"""Progress of long host-side work: a tqdm bar on a terminal, else plain log lines with the
count, the rate and the time left, every 30 seconds (and at the end of work that took longer)."""

import sys
import time

from absl import logging

LOG_EVERY_S = 30.0


def format_eta(seconds):
  """Seconds as 1h02m03s, or 2m03s under an hour."""
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def track(iterable, total, what, unit="items"):
  """Yields `iterable`'s items (`total` of them) while reporting how far `what` has got."""
  if sys.stderr.isatty():
    from tqdm import tqdm  # only on a terminal: logs stay plain lines
    yield from tqdm(iterable, total=total, desc=what, unit=f" {unit}", leave=False)
    return
  start = last = time.monotonic()
  for done, item in enumerate(iterable, 1):
    yield item
    now = time.monotonic()
    if now - last >= LOG_EVERY_S or (done == total and now - start >= LOG_EVERY_S):
      rate = done / max(now - start, 1e-9)
      logging.info("%s: %d/%d %s, %.1f %s/s, ETA %s", what, done, total, unit, rate, unit,
                   format_eta((total - done) / rate))
      last = now
