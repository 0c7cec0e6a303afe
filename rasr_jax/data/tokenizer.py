"""Tokenizers: sentencepiece (one trained by the project with the RASR special tokens reserved,
or the user's) and HuggingFace `tokenizer.json` (`hf_tokenizer.py`), behind one interface.

A user's model need not have the project's pieces: its end-of-document piece (`</s>`,
`<|end_of_text|>`, ...) serves as `<eos>`, the eos id pads (padding is never attended), and
missing `<draft>`, `<critique>`, `<refine>` markers take three ids the tokenizer reserves
(Llama 3's reserved special tokens), else the last three ids of the model's vocabulary when it
is that much larger than the tokenizer.
"""

import hashlib
import io
import os
import sys
import time

import numpy as np
import sentencepiece as spm
from absl import logging
from etils import epath

from rasr_jax import rounding, storage
from rasr_jax.reflection.answers import PieceBytes
from rasr_jax.reflection.layout import SpecialIds

PAD, EOS, DRAFT, CRITIQUE, REFINE = "<pad>", "<eos>", "<draft>", "<critique>", "<refine>"
SPECIAL_TOKENS = (PAD, EOS, DRAFT, CRITIQUE, REFINE)
MARKERS = (DRAFT, CRITIQUE, REFINE)  # in SpecialIds' field order
# The chat layout's role headers (posttrain/chat.py); the project's tokenizers hold each as one
# piece, others read them as text.
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
# A piece of its own in the project's tokenizers: no piece spans a line break, so text cut at one
# encodes as the two parts' tokens (a question and its answer, a prompt and its continuation).
NEWLINE = "\n"
SPACE_PIECE = "\u2581"  # how sentencepiece writes a space inside its pieces
# The ids `train` gives pad, eos and unk; the markers (its user-defined symbols) follow them.
# TRAINED_MARKER_IDS hold for tokenizers made by `train` only (tests/test_data.py checks it); the
# compile check and the benchmarks build the step with them when no tokenizer is at hand.
_TRAINED_PAD_ID, _TRAINED_EOS_ID, _TRAINED_UNK_ID = 0, 1, 2
TRAINED_MARKER_IDS = SpecialIds(*range(_TRAINED_UNK_ID + 1, _TRAINED_UNK_ID + 1 + len(MARKERS)),
                                eos=_TRAINED_EOS_ID,
                                pad=_TRAINED_PAD_ID)


class TokenizerError(ValueError):
  """A tokenizer file is missing, corrupt or lacks the special tokens."""


class Tokenizer:
  """Encodes text to ids and back; knows the ids of the special tokens.

  The base holds what every kind shares: the special ids (the markers from the tokenizer's own
  pieces, else from `_reserved_marker_ids`, else the model vocabulary's last three ids), the
  prompt and document conventions, and the bytes each id decodes to. A subclass reads one file
  format (`model`: its bytes) and implements the hooks below.
  """

  file_name = ""  # what a work directory calls its copy
  eos_pieces = ()  # end-of-document pieces, in order of preference, when there is no <eos>
  chat_template = None  # a model's own Jinja chat template (data/chat.py), or None

  def __init__(self, model: bytes, path: str = "<memory>", model_vocab_size=None):
    self.path = path
    self.model = model
    self._load(model)
    ids = {t: self._piece_id(t) for t in SPECIAL_TOKENS}
    for piece in self.eos_pieces:
      if ids[EOS] is None:
        ids[EOS] = self._piece_id(piece)
    if ids[PAD] is None:
      ids[PAD] = ids[EOS]
    if any(ids[t] is None for t in MARKERS):
      ids.update(zip(MARKERS, self._reserved_marker_ids() or [None] * len(MARKERS)))
    missing_markers = [t for t in MARKERS if ids[t] is None]
    spare = (model_vocab_size or 0) - self.vocab_size
    # True when the markers take the model vocabulary's last ids, which the tokenizer lacks.
    self.markers_past_pieces = bool(missing_markers) and spare >= len(MARKERS)
    if self.markers_past_pieces:
      ids.update(zip(MARKERS, range(model_vocab_size - len(MARKERS), model_vocab_size)))
    missing = [t for t in SPECIAL_TOKENS if ids[t] is None]
    if missing:
      raise TokenizerError(
          f"tokenizer {path}: special tokens missing: {', '.join(missing)} (an end-of-document "
          f"piece, one of {', '.join((EOS, *self.eos_pieces))}, is needed; missing markers take "
          "the model's last three ids only when config.model.vocab_size exceeds the "
          f"tokenizer's {self.vocab_size} pieces by 3)")
    self.special_ids = ids
    self.pad_id = ids[PAD]
    self.eos_id = ids[EOS]
    # A model with a beginning-of-sequence piece (Llama's <s>) starts every document and prompt
    # with it; the project's own tokenizers have none, and a prompt starts with <eos>, the end
    # of whatever came before.
    self.bos_id = self._bos_id()

  # --- hooks of a file format ---

  def _load(self, model: bytes):
    """Parses `model`; raises TokenizerError naming self.path when it is not one."""
    raise NotImplementedError

  def _piece_id(self, piece):
    """The id of `piece`, or None when the tokenizer does not have it."""
    raise NotImplementedError

  def _reserved_marker_ids(self):
    """Three ids the tokenizer reserves for uses of its owner's (never produced from text), or
    None."""
    return None

  def _bos_id(self):
    """The beginning-of-sequence id, or None."""
    raise NotImplementedError

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def decode(self, ids) -> str:
    """Text of token ids; special ids and ids the tokenizer does not have (markers and unused
    rows of a larger model vocabulary) are dropped."""
    raise NotImplementedError

  def _surfaces(self):
    """The bytes each of the tokenizer's ids adds to decoded text (b"" for special ids)."""
    raise NotImplementedError

  # --- shared ---

  @property
  def marker_ids(self) -> SpecialIds:
    """The ids of `<draft>`, `<critique>`, `<refine>`, `<eos>` and padding."""
    return SpecialIds(*(self.special_ids[t] for t in MARKERS), eos=self.eos_id, pad=self.pad_id)

  @property
  def checksum(self) -> str:
    return hashlib.sha256(self.model).hexdigest()

  def encode_document(self, text: str) -> list[int]:
    """A training document: the text as a prompt starts (see `encode_prompt`) + `<eos>`, so that
    under document masking a prompt's first token is what every document's was."""
    return self.encode_prompt(text) + [self.eos_id]

  def encode_prompt(self, text: str) -> list[int]:
    """A prompt as the model reads one: `start_id` + the text."""
    return [self.start_id] + self.encode(text)

  @property
  def start_id(self) -> int:
    """The id every document and prompt starts with: the model's bos when it has one (Llama's
    `<s>`), else `<eos>` (the end of whatever came before)."""
    return self.eos_id if self.bos_id is None else self.bos_id

  @property
  def hf_token_ids(self) -> dict:
    """bos / eos / pad ids as an HF config names them (bos: the id a prompt starts with)."""
    return {"bos": self.start_id, "eos": self.eos_id, "pad": self.pad_id}

  def piece_bytes(self, model_vocab_size: int) -> PieceBytes:
    """The bytes each of `model_vocab_size` ids adds to decoded text (ids `decode` drops add
    none), for reading answers on device."""
    surfaces = list(self._surfaces())[:model_vocab_size]
    surfaces += [b""] * (model_vocab_size - len(surfaces))
    width = max(1, max(map(len, surfaces)))
    table = np.zeros((model_vocab_size, width), np.uint8)
    for index, surface in enumerate(surfaces):
      table[index, :len(surface)] = np.frombuffer(surface, np.uint8)
    return PieceBytes(table, np.asarray([len(s) for s in surfaces], np.int32))

  def save(self, path: str):
    storage.write_atomically(path, self.model)


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model (`.model`): the project's own, or a user's (Llama 2's)."""

  file_name = "tokenizer.model"
  eos_pieces = ("</s>",)

  def _load(self, model):
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(model)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ text
      raise TokenizerError(
          f"tokenizer {self.path}: not a valid sentencepiece model ({e})") from None

  def _piece_id(self, piece):
    index = self._sp.piece_to_id(piece)
    return None if index == self._sp.unk_id() and piece != self._sp.id_to_piece(index) else index

  def _bos_id(self):
    bos = self._sp.bos_id()
    return bos if 0 <= bos < self.vocab_size else None

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size])

  def _surfaces(self):
    for index in range(self.vocab_size):
      if self._sp.is_control(index):
        yield b""
      elif self._sp.is_byte(index):
        yield bytes([int(self._sp.id_to_piece(index)[3:-1], 16)])
      elif self._sp.is_unknown(index):
        yield self._sp.decode([index]).encode()  # " \u2047 " (sentencepiece's)
      else:
        yield self._sp.id_to_piece(index).replace(SPACE_PIECE, " ").encode()


# A vocabulary grown for the markers is rounded up to a multiple of this, so that any
# mesh.tensor dividing it (every power of two up to 128) can shard the vocabulary axis.
GROWN_VOCAB_MULTIPLE = 128


def vocab_for_markers(tokenizer_path: str, model_vocab_size: int) -> int:
  """A model vocabulary >= `model_vocab_size` in which the tokenizer at `tokenizer_path` has ids
  for the markers: its own pieces, else the vocabulary's last three ids, which must lie past the
  tokenizer's pieces. When `model_vocab_size` is too small for that, it grows to the next
  multiple of GROWN_VOCAB_MULTIPLE with room for the markers (the ids between the pieces and the
  markers stay unused)."""
  tokenizer = load(tokenizer_path, model_vocab_size=sys.maxsize)  # room for any markers
  needed = tokenizer.vocab_size + len(MARKERS)
  if not tokenizer.markers_past_pieces or model_vocab_size >= needed:
    return model_vocab_size
  return rounding.round_up(needed, GROWN_VOCAB_MULTIPLE)


# The names a tokenizer file has in a work directory or an HF model directory, the preferred
# first: HFTokenizer.file_name, SentencePieceTokenizer.file_name.
FILE_NAMES = ("tokenizer.json", "tokenizer.model")


def find_in(directory: str):
  """The path of the tokenizer file in `directory` (see FILE_NAMES), or None."""
  for name in FILE_NAMES:
    if epath.Path(directory, name).is_file():
      return os.path.join(directory, name)
  return None


def load(path: str, model_vocab_size=None) -> Tokenizer:
  """The tokenizer at `path`, for a model of `model_vocab_size` ids (see Tokenizer): an HF
  `tokenizer.json`, else a sentencepiece model; a directory's own (`find_in`)."""
  from rasr_jax.data import hf_tokenizer  # the `tokenizers` package loads only for its files
  if epath.Path(path).is_dir():
    path = find_in(path) or path
  if not epath.Path(path).is_file():
    raise TokenizerError(f"tokenizer {path}: file not found")
  model = epath.Path(path).read_bytes()
  if path.endswith(".json"):
    return hf_tokenizer.HFTokenizer(model, path, model_vocab_size)
  return SentencePieceTokenizer(model, path, model_vocab_size)


def train(texts, vocab_size: int) -> Tokenizer:
  """Trains a byte-fallback BPE model on `texts` (a list of str) with the special tokens, the
  chat layout's role markers (after the markers: ids 6, 7, 8) and the newline (id 9).

  Identity normalisation: text is encoded as written (no space is added in front; newlines, tabs
  and runs of spaces are kept and decode back exactly), so few-shot prompts, code and chat
  formats keep their layout. The newline is a piece of its own: text cut at a line break
  encodes as its parts' tokens one after the other, so a prompt that ends where a document's
  line ends is read as the document's tokens were.
  """
  start = time.monotonic()
  logging.info("training a tokenizer of %d pieces on %d documents", vocab_size, len(texts))
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_writer=buf,
      model_type="bpe",
      vocab_size=vocab_size,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True,
      character_coverage=1.0,
      byte_fallback=True,
      pad_id=_TRAINED_PAD_ID,
      pad_piece=PAD,
      eos_id=_TRAINED_EOS_ID,
      eos_piece=EOS,
      unk_id=_TRAINED_UNK_ID,
      bos_id=-1,
      user_defined_symbols=[*MARKERS, *ROLE_MARKERS, NEWLINE],
      add_dummy_prefix=False,
      # the space mark, even for texts without a space (else spaces
      # would be byte pieces that decode to the mark, not a space)
      required_chars=SPACE_PIECE,
      hard_vocab_limit=False,
      split_digits=True,
      num_threads=2,
      minloglevel=2,
      max_sentence_length=1 << 16)
  logging.info("trained the tokenizer (%.1f s)", time.monotonic() - start)
  return SentencePieceTokenizer(buf.getvalue())


def workdir_path(workdir: str, tokenizer: Tokenizer) -> str:
  """Where a work directory keeps `tokenizer`, the one its checkpoints were trained with."""
  return os.path.join(workdir, tokenizer.file_name)


def existing(workdir: str, configured: str, model_vocab_size: int):
  """The work directory's tokenizer, else the configured path's (`data.tokenizer`), else None."""
  own = find_in(workdir)
  if own:
    return load(own, model_vocab_size)
  if configured:
    return load(configured, model_vocab_size)
  return None
