"""Progress of host-side work: every item passes through; off a terminal, log lines carry the
count, the rate and the time left."""

from rasr_jax import progress


def test_track_passes_every_item_and_logs_count_rate_and_eta(monkeypatch):
  lines = []
  monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
  monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
  assert list(progress.track(iter(range(4)), 4, "reading", "files")) == [0, 1, 2, 3]
  assert len(lines) == 4 and lines[-1].startswith("reading: 4/4 files, ")
  assert "files/s, ETA 0m00s" in lines[-1] and "ETA" in lines[0]


def test_format_eta():
  assert progress.format_eta(3723) == "1h02m03s" and progress.format_eta(59.9) == "0m59s"
