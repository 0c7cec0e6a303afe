"""Where documents come from: the bundled verifiable tasks, or local .txt / .jsonl files.

Files are checked at start-up: a glob that matches nothing, an empty file, invalid UTF-8 (by
policy: rejected naming the file and byte offset, or replaced and counted), a JSONL line that is
not an object with the text field, a document longer than data.max_document_chars: each raises
`DataError` with one line naming the file.
"""

import dataclasses
import glob
import hashlib
import json
import os

from rasr_jax import progress, tasks

BUNDLED_FORMAT_VERSION = "3"


class DataError(ValueError):
  """A data file or glob is unusable; the message names it."""


@dataclasses.dataclass(frozen=True)
class Corpus:
  documents: list  # list[str]
  fingerprint: str  # sha256 over the sources' names and bytes
  replaced_utf8_errors: int = 0  # bytes replaced under invalid_utf8=replace


def load_corpus(data_cfg, seed: int) -> Corpus:
  if data_cfg.source == "bundled":
    return _bundled(data_cfg.bundled_examples, seed)
  return _files(data_cfg, data_cfg.files)


HELD_OUT_SEED_OFFSET = 1_000_003
HELD_OUT_BUNDLED_EXAMPLES = 2000


def load_held_out(data_cfg, seed: int):
  """Held-out documents for evaluation: another seed of the bundled tasks, or
  `data.eval_files`; None when source=files and no eval files are named."""
  if data_cfg.source == "bundled":
    count = min(data_cfg.bundled_examples, HELD_OUT_BUNDLED_EXAMPLES)
    return _bundled(count, seed + HELD_OUT_SEED_OFFSET)
  if not data_cfg.eval_files:
    return None
  return _files(data_cfg, data_cfg.eval_files)


def _bundled(num_examples, seed):
  docs = [ex.text() for ex in tasks.bundled_corpus(seed, num_examples)]
  digest = hashlib.sha256(f"bundled:v{BUNDLED_FORMAT_VERSION}:{seed}:{num_examples}".encode())
  for doc in docs:
    digest.update(doc.encode())
  return Corpus(docs, digest.hexdigest())


def expand_globs(patterns: str, field="data.files", extensions=(".txt", ".jsonl")) -> list[str]:
  """The files that comma-separated globs `patterns` (config `field`) match."""
  if not patterns.strip():
    raise DataError(f"config.{field} is empty but config.data.source='files'")
  paths = []
  for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
    matched = sorted(
        p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not matched:
      raise DataError(f"config.{field} glob {pattern!r} matches no file")
    paths.extend(matched)
  for path in paths:
    if not path.endswith(extensions):
      raise DataError(f"config.{field} file {path}: unsupported extension (expected "
                      f"{' or '.join(extensions)})")
  return paths


def joined(corpus: Corpus, documents, label: str) -> Corpus:
  """`corpus` with more `documents` (from the source named `label`) after its own."""
  digest = hashlib.sha256(corpus.fingerprint.encode() + label.encode())
  for doc in documents:
    digest.update(doc.encode())
  return dataclasses.replace(corpus,
                             documents=corpus.documents + list(documents),
                             fingerprint=digest.hexdigest())


def _decode(path, raw, policy):
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError as e:
    if policy == "error":
      raise DataError(f"data file {path}: invalid UTF-8 at byte offset {e.start} "
                      "(set config.data.invalid_utf8=replace to replace such bytes)") from None
    text = raw.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - raw.decode("utf-8", "ignore").count("\ufffd")


def _nonempty_lines(text):
  """[(line number, line)] for every line that is not blank."""
  return [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def json_lines(text, where):
  """[(line number, object)] of every non-blank line of a .jsonl text (lines end at "\\n" only:
  JSON strings may hold U+2028 and other breaks `str.splitlines` splits at); DataError
  "`where` line N: not JSON (...)" for a line that is not JSON."""
  records = []
  for number, line in enumerate(text.split("\n"), 1):
    if not line.strip():
      continue
    try:
      records.append((number, json.loads(line)))
    except json.JSONDecodeError as e:
      raise DataError(f"{where} line {number}: not JSON ({e.msg})") from None
  return records


def _documents(path, text, text_field):
  """[(line number, document)]. .txt: one document per non-empty line. .jsonl: one object per
  line, text in `text_field`."""
  if path.endswith(".txt"):
    return _nonempty_lines(text)
  docs = []
  for number, record in json_lines(text, f"data file {path}"):
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
      raise DataError(f"data file {path} line {number}: expected an object with a string "
                      f"field {text_field!r} (config.data.text_field)")
    if record[text_field].strip():
      docs.append((number, record[text_field]))
  return docs


def _files(data_cfg, patterns):
  digest = hashlib.sha256()
  documents, replaced = [], 0
  paths = expand_globs(patterns)
  for path in progress.track(paths, len(paths), "reading data files", "files"):
    with open(path, "rb") as f:
      raw = f.read()
    if not raw.strip():
      raise DataError(f"data file {path}: empty")
    text, bad = _decode(path, raw, data_cfg.invalid_utf8)
    docs = _documents(path, text, data_cfg.text_field)
    if not docs:
      raise DataError(f"data file {path}: no non-empty documents")
    limit = data_cfg.max_document_chars
    for number, doc in docs:
      if limit and len(doc) > limit:
        raise DataError(f"data file {path} line {number}: a document of {len(doc):,} characters "
                        f"exceeds config.data.max_document_chars={limit:,} (0 = no limit)")
    documents.extend(doc for _, doc in docs)
    replaced += bad
    digest.update(os.path.abspath(path).encode() + b"\0" + hashlib.sha256(raw).digest())
  return Corpus(documents, digest.hexdigest(), replaced)


def read_texts(path, field):
  """Prompts or texts from a user's file: `.jsonl` objects with a string `field`, else one text
  per non-empty line. Strict UTF-8."""
  if not os.path.isfile(path):
    raise DataError(f"file {path}: not found")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"file {path}: invalid UTF-8 at byte offset {e.start}") from None
  if path.endswith(".jsonl"):
    texts = [doc for _, doc in _documents(path, text, field)]
  else:
    texts = [line for _, line in _nonempty_lines(text)]
  if not texts:
    raise DataError(f"file {path}: no non-empty texts")
  return texts
