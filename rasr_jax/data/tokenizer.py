"""A sentencepiece tokenizer trained by the project, with the RASR special tokens reserved."""

import hashlib
import io
import os

import sentencepiece as spm

PAD, EOS, DRAFT, CRITIQUE, REFINE = "<pad>", "<eos>", "<draft>", "<critique>", "<refine>"
SPECIAL_TOKENS = (PAD, EOS, DRAFT, CRITIQUE, REFINE)


class TokenizerError(ValueError):
  """A tokenizer file is missing, corrupt or lacks the special tokens."""


class Tokenizer:
  """Encodes text to ids and back; knows the ids of the special tokens."""

  def __init__(self, model_proto: bytes, path: str = "<memory>"):
    self.path = path
    self.proto = model_proto
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(model_proto)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ text
      raise TokenizerError(f"tokenizer {path}: not a valid sentencepiece model ({e})") from None
    missing = [t for t in SPECIAL_TOKENS if self._sp.piece_to_id(t) == self._sp.unk_id()]
    if missing:
      raise TokenizerError(f"tokenizer {path}: special tokens missing: {', '.join(missing)}")
    self.special_ids = {t: self._sp.piece_to_id(t) for t in SPECIAL_TOKENS}
    self.pad_id = self.special_ids[PAD]
    self.eos_id = self.special_ids[EOS]

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def checksum(self) -> str:
    return hashlib.sha256(self.proto).hexdigest()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])

  def save(self, path: str):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(self.proto)
    os.replace(tmp, path)


def load(path: str) -> Tokenizer:
  if not os.path.isfile(path):
    raise TokenizerError(f"tokenizer {path}: file not found")
  with open(path, "rb") as f:
    return Tokenizer(f.read(), path)


def train(texts, vocab_size: int) -> Tokenizer:
  """Trains a byte-fallback BPE model on `texts` (an iterable of str) with the special tokens."""
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buf, model_type="bpe",
      vocab_size=vocab_size, character_coverage=1.0, byte_fallback=True,
      pad_id=0, pad_piece=PAD, eos_id=1, eos_piece=EOS, unk_id=2, bos_id=-1,
      user_defined_symbols=[DRAFT, CRITIQUE, REFINE], hard_vocab_limit=False,
      split_digits=True, num_threads=2, minloglevel=2, max_sentence_length=1 << 16)
  return Tokenizer(buf.getvalue())
