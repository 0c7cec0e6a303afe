"""Where documents come from: the bundled verifiable tasks, or files (`data.files`, or the
weighted components of `data.mixture`).

File formats (documents.py): `.txt` (a document a line) and `.jsonl` (the text field of an
object a line) are read whole and checked at start-up; `.array_record` (the converter's token
shards, or JSON records) and `.parquet` are read a record at a time while training, so a corpus
of any size starts at once and is not held in memory. At start-up: a glob that matches nothing,
an empty file, invalid UTF-8 (by policy: rejected naming the file and byte offset, or replaced
and counted), a JSONL line that is not an object with the text field, a document longer than
data.max_document_chars, a Parquet file without the text column: each raises `DataError` with
one line naming the file.
"""

import dataclasses
import hashlib
import json
import os

from etils import epath

from rasr_jax import progress, storage, tasks
from rasr_jax.data import documents as docs_lib
from rasr_jax.data.documents import DataError

BUNDLED_FORMAT_VERSION = "3"
TEXT_EXTENSIONS = (".txt", ".jsonl")
EXTENSIONS = TEXT_EXTENSIONS + (".array_record", ".parquet")


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The training (or held-out) documents: one collection, or a weighted mixture of several."""
  components: tuple  # collections of documents (documents.py): one, or data.mixture's
  weights: tuple  # tuple[float, ...]: each component's share of the documents drawn; sums to 1
  fingerprint: str  # sha256 over the sources' names and contents (see documents.file_digest)
  replaced_utf8_errors: int = 0  # bytes replaced under invalid_utf8=replace

  @property
  def documents(self):
    """Every document, the components one after the other."""
    return docs_lib.concatenated(list(self.components))

  def texts(self, count) -> list:
    """About `count` documents as text (tokenizer training, perplexity): the first ones of each
    component, as many as its weight's share; DataError when they are token shards, which hold
    no text."""
    shards = docs_lib.token_parts(self.documents)
    if shards:
      raise DataError(f"data files {shards[0].paths[0]} are token shards, which hold no text: "
                      "set config.data.tokenizer to the tokenizer they were converted with "
                      f"(its sha256 is {shards[0].tokenizer_sha256})")
    return [
        component[i]
        for component, weight in zip(self.components, self.weights)
        for i in range(min(len(component), round(count * weight)))
    ]


def single_corpus(documents, fingerprint="", replaced=0) -> Corpus:
  """A corpus of one collection of documents (a list, or one of documents.py's)."""
  return Corpus((documents,), (1.0,), fingerprint, replaced)


def load_corpus(data_cfg, seed: int) -> Corpus:
  if data_cfg.source == "bundled":
    return _bundled(data_cfg, data_cfg.bundled_examples, seed)
  if data_cfg.mixture:
    return _mixture(data_cfg)
  return _files(data_cfg, data_cfg.files)


def _mixture(data_cfg):
  components, replaced = [], 0
  digest = hashlib.sha256()
  spec = data_cfg.mixture_components()
  total = sum(w for _, w in spec)
  for globs, weight in spec:
    corpus = _files(data_cfg, globs, field="data.mixture")
    components.append(corpus.documents)
    replaced += corpus.replaced_utf8_errors
    digest.update(f"{corpus.fingerprint}={weight / total!r};".encode())
  return Corpus(tuple(components), tuple(w / total for _, w in spec), digest.hexdigest(), replaced)


HELD_OUT_SEED_OFFSET = 1_000_003
HELD_OUT_BUNDLED_EXAMPLES = 2000


def load_held_out(data_cfg, seed: int):
  """Held-out documents for evaluation: another seed of the bundled tasks, or
  `data.eval_files`; None when source=files and no eval files are named."""
  if data_cfg.source == "bundled":
    count = min(data_cfg.bundled_examples, HELD_OUT_BUNDLED_EXAMPLES)
    return _bundled(data_cfg, count, seed + HELD_OUT_SEED_OFFSET)
  if not data_cfg.eval_files:
    return None
  return _files(data_cfg, data_cfg.eval_files, field="data.eval_files")


def _bundled(data_cfg, num_examples, seed):
  examples = tasks.bundled_corpus(seed, num_examples, data_cfg.bundled_weights())
  docs = [ex.document() for ex in examples]
  digest = hashlib.sha256(f"bundled:v{BUNDLED_FORMAT_VERSION}:{seed}:{num_examples}".encode())
  for doc in docs:
    digest.update(doc.encode())
  return single_corpus(docs, digest.hexdigest())


def expand_globs(patterns: str, field="data.files", extensions=EXTENSIONS) -> list[str]:
  """The files that comma-separated globs `patterns` (config `field`) match."""
  if not patterns.strip():
    raise DataError(f"config.{field} is empty but config.data.source='files' (set data.files "
                    "or data.mixture)")
  paths = []
  for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
    try:
      matched = storage.glob(pattern)
    except NotImplementedError as e:  # epath refuses `**` on object stores
      raise DataError(f"config.{field} glob {pattern!r}: {e}") from None
    if not matched:
      raise DataError(f"config.{field} glob {pattern!r} matches no file")
    paths.extend(matched)
  for path in paths:
    if not path.endswith(extensions):
      raise DataError(f"config.{field} file {path}: unsupported extension (expected "
                      f"{' or '.join(extensions)})")
  return paths


def joined(corpus: Corpus, documents, label: str) -> Corpus:
  """`corpus` with more `documents` (from the source named `label`): after its own documents,
  or in a mixture one more component, weighted by its share of all documents."""
  digest = hashlib.sha256(corpus.fingerprint.encode() + label.encode())
  for doc in documents:
    digest.update(doc.encode())
  documents = list(documents)
  if len(corpus.components) == 1:
    return dataclasses.replace(corpus,
                               components=(docs_lib.concatenated([corpus.documents, documents]),),
                               fingerprint=digest.hexdigest())
  share = len(documents) / (len(documents) + sum(len(c) for c in corpus.components))
  return dataclasses.replace(corpus,
                             components=corpus.components + (documents,),
                             weights=tuple(w * (1 - share) for w in corpus.weights) + (share,),
                             fingerprint=digest.hexdigest())


def decode_utf8(where, raw, policy):
  """(text, replaced count) of the bytes `raw` of `where` (a file, or a file's line) under the
  invalid-UTF-8 `policy`."""
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError as e:
    if policy == "error":
      raise DataError(f"data file {where}: invalid UTF-8 at byte offset {e.start} "
                      "(set config.data.invalid_utf8=replace to replace such bytes)") from None
    text = raw.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - raw.decode("utf-8", "ignore").count("\ufffd")


def _nonempty_lines(text, first_line=1):
  """[(line number, line)] for every line that is not blank; lines end at "\n" (a "\r"
  before it dropped) and nowhere else, so the numbers are an editor's."""
  lines = (line.removesuffix("\r") for line in text.split("\n"))
  return [(number, line) for number, line in enumerate(lines, first_line) if line.strip()]


def json_lines(text, where, first_line=1):
  """[(line number, object)] of every non-blank line of a .jsonl text (lines end at "\\n" only:
  JSON strings may hold U+2028 and other breaks `str.splitlines` splits at); DataError
  "`where` line N: not JSON (...)" for a line that is not JSON."""
  records = []
  for number, line in enumerate(text.split("\n"), first_line):
    if not line.strip():
      continue
    try:
      records.append((number, json.loads(line)))
    except json.JSONDecodeError as e:
      raise DataError(f"{where} line {number}: not JSON ({e.msg})") from None
  return records


def jsonl_records(path, what):
  """[(line number, object)] of every non-blank line of the .jsonl file `path`, which errors
  call `what` (e.g. "question/answer file"); DataError for an empty file, invalid UTF-8 (naming
  line and byte) or a line that is not JSON."""
  raw = epath.Path(path).read_bytes()
  if not raw.strip():
    raise DataError(f"{what} {path}: empty")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    number, line_start = raw.count(b"\n", 0, e.start) + 1, raw.rfind(b"\n", 0, e.start) + 1
    raise DataError(f"{what} {path} line {number}: invalid UTF-8 at byte "
                    f"{e.start - line_start} of the line") from None
  return json_lines(text, f"{what} {path}")


def line_documents(path, text, text_field, first_line=1):
  """[(line number, document)] of `text`, the lines of `path` from `first_line` on. .txt: one
  document per non-empty line. .jsonl: one object per line, text in `text_field`."""
  if path.endswith(".txt"):
    return _nonempty_lines(text, first_line)
  docs = []
  for number, record in json_lines(text, f"data file {path}", first_line):
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
      raise DataError(f"data file {path} line {number}: expected an object with a string "
                      f"field {text_field!r} (config.data.text_field)")
    if record[text_field].strip():
      docs.append((number, record[text_field]))
  return docs


def _files(data_cfg, patterns, field="data.files"):
  """The documents of the files `patterns` match, in order: consecutive text files as one list,
  each other file a collection of its own (documents.py)."""
  digest = hashlib.sha256()
  parts, replaced = [], 0
  paths = expand_globs(patterns, field)
  for path in progress.track(paths, len(paths), "reading data files", "files"):
    if path.endswith(TEXT_EXTENSIONS):
      docs, raw, bad = _text_file(data_cfg, path)
      if not parts or not isinstance(parts[-1], list):
        parts.append([])
      parts[-1].extend(docs)
      replaced += bad
      digest.update(storage.absolute(path).encode() + b"\0" + hashlib.sha256(raw).digest())
    else:
      part = record_documents(path, data_cfg.text_field)
      parts.append(part)
      tag = b"".join(t.tokenizer_sha256.encode() for t in docs_lib.token_parts(part))
      digest.update(storage.absolute(path).encode() + b"\0" + docs_lib.file_digest(path) + tag)
  return single_corpus(docs_lib.concatenated(parts), digest.hexdigest(), replaced)


def _text_file(data_cfg, path):
  """A .txt / .jsonl file's documents, its bytes and the count of replaced UTF-8 errors."""
  raw = epath.Path(path).read_bytes()
  if not raw.strip():
    raise DataError(f"data file {path}: empty")
  text, bad = decode_utf8(path, raw, data_cfg.invalid_utf8)
  docs = line_documents(path, text, data_cfg.text_field)
  if not docs:
    raise DataError(f"data file {path}: no non-empty documents")
  limit = data_cfg.max_document_chars
  for number, doc in docs:
    if limit and len(doc) > limit:
      raise DataError(f"data file {path} line {number}: a document of {len(doc):,} characters "
                      f"exceeds config.data.max_document_chars={limit:,} (0 = no limit)")
  return [doc for _, doc in docs], raw, bad


def record_documents(path, field):
  """An .array_record or .parquet file's documents, read on demand (documents.py); DataError
  when the file is empty, unreadable, or its first record has no text `field`."""
  if path.endswith(".parquet"):
    return docs_lib.parquet_documents(path, field)
  if storage.is_remote(path):
    raise DataError(f"data file {path}: ArrayRecord files are read from a local path (mount "
                    "the bucket on every host, e.g. with gcsfuse, and pass the mounted path)")
  if not os.path.getsize(path):
    raise DataError(f"data file {path}: empty")
  meta = docs_lib.read_tokens_meta(os.path.dirname(path))
  if meta is None:
    part = docs_lib.JsonRecords([path], field)
  elif os.path.basename(path) not in meta.get("shards", ()):
    raise DataError(f"data file {path}: not one of the shards its folder's "
                    f"{docs_lib.TOKENS_META} lists")
  else:
    part = docs_lib.TokenShards([path], meta)
  try:
    count = len(part)
  except Exception as e:  # array_record raises its own status errors
    raise DataError(f"data file {path}: not a readable ArrayRecord file ({e})") from None
  if not count:
    raise DataError(f"data file {path}: no records")
  part[0]  # a JSON record without the text field fails here, at start-up
  return part


def check_tokenized(corpus: Corpus, tokenizer_sha256: str):
  """DataError when token shards in `corpus` were converted with another tokenizer."""
  for shards in docs_lib.token_parts(corpus.documents):
    if shards.tokenizer_sha256 != tokenizer_sha256:
      raise DataError(f"data files {shards.paths[0]}: converted with the tokenizer of sha256 "
                      f"{shards.tokenizer_sha256}, but this run's tokenizer is "
                      f"{tokenizer_sha256} (set config.data.tokenizer to the shards' tokenizer, "
                      "or convert again)")


def read_utf8(path, what):
  """The text of the user's file `path`, which errors call `what`; DataError when it is missing
  or not strict UTF-8."""
  if not epath.Path(path).is_file():
    raise DataError(f"{what}: not found")
  raw = epath.Path(path).read_bytes()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{what}: invalid UTF-8 at byte offset {e.start}") from None


def read_texts(path, field):
  """Prompts or texts from a user's file: `.jsonl` objects with a string `field`, else one text
  per non-empty line. Strict UTF-8."""
  text = read_utf8(path, f"file {path}")
  if path.endswith(".jsonl"):
    texts = [doc for _, doc in line_documents(path, text, field)]
  else:
    texts = [line for _, line in _nonempty_lines(text)]
  if not texts:
    raise DataError(f"file {path}: no non-empty texts")
  return texts
