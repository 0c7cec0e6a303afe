"""HuggingFace `tokenizer.json` files (the `tokenizers` package) behind the Tokenizer interface.

bos, eos and pad are the ones `tokenizer_config.json` beside the file names (HF model
directories have one; `save` writes one), else the usual names (`<s>` / `<|begin_of_text|>`,
`</s>` / `<|end_of_text|>` / `<|endoftext|>`). Markers the tokenizer lacks take its first three
reserved special tokens (`<|reserved_special_token_N|>`, Llama 3) when it has them. Its
`chat_template`, when it has one, lays out post-training conversations (data/chat.py).
"""

import json
import os
import re

import tokenizers
from etils import epath

from rasr_jax import storage
from rasr_jax.data.tokenizer import Tokenizer, TokenizerError

CONFIG_NAME = "tokenizer_config.json"  # beside tokenizer.json: bos / eos / pad names
BOS_PIECES = ("<s>", "<|begin_of_text|>", "<bos>")
EOS_PIECES = ("</s>", "<|end_of_text|>", "<|endoftext|>")
RESERVED = "<|reserved_special_token_{}|>"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet():
  """{character: byte} of the printable spelling byte-level BPE gives every byte (GPT-2's
  scheme: printable Latin-1 bytes stand for themselves, the others for 256, 257, ...)."""
  kept = [
      *range(ord("!"),
             ord("~") + 1), *range(ord("\xa1"),
                                   ord("\xac") + 1), *range(ord("\xae"),
                                                            ord("\xff") + 1)
  ]
  moved = [b for b in range(256) if b not in kept]
  spelling = {b: chr(b) for b in kept} | {b: chr(256 + n) for n, b in enumerate(moved)}
  return {char: b for b, char in spelling.items()}


def _default_template(entry):
  """tokenizer_config.json's `chat_template`: a string, or a list of named templates (the one
  called "default"); None when there is none."""
  if isinstance(entry, list):
    named = {t.get("name"): t.get("template") for t in entry if isinstance(t, dict)}
    entry = named.get("default")
  return entry if isinstance(entry, str) and entry.strip() else None


def _token_name(entry):
  """A tokenizer_config.json token entry (a string or {"content": ...}) -> its text or None."""
  return entry.get("content") if isinstance(entry, dict) else entry


class HFTokenizer(Tokenizer):
  """An HF `tokenizer.json` (for example Llama 3's byte-level BPE)."""

  file_name = "tokenizer.json"

  def _load(self, model):
    try:
      self._tok = tokenizers.Tokenizer.from_str(model.decode("utf-8"))
      self._json = json.loads(model)
    except Exception as e:  # tokenizers raises Exception with Rust text
      raise TokenizerError(f"tokenizer {self.path}: not a valid tokenizer.json ({e})") from None
    self._names = {}
    config_path = os.path.join(os.path.dirname(self.path), CONFIG_NAME)
    if epath.Path(config_path).is_file():
      try:
        config = json.loads(epath.Path(config_path).read_text())
      except ValueError as e:
        raise TokenizerError(f"tokenizer config {config_path}: not JSON ({e})") from None
      if not isinstance(config, dict):
        raise TokenizerError(f"tokenizer config {config_path}: not a JSON object")
      self._names = {k: _token_name(config.get(f"{k}_token")) for k in ("bos", "eos", "pad")}
      self.chat_template = _default_template(config.get("chat_template"))
    self.eos_pieces = tuple(filter(None, (self._names.get("eos"), *EOS_PIECES)))

  def _piece_id(self, piece):
    return self._tok.token_to_id(piece)

  def _reserved_marker_ids(self):
    ids = [self._piece_id(RESERVED.format(n)) for n in range(3)]
    return None if None in ids else ids

  def _bos_id(self):
    for piece in filter(None, (self._names.get("bos"), *BOS_PIECES)):
      if self._piece_id(piece) is not None:
        return self._piece_id(piece)
    return None

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    kept = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    return self._tok.decode(kept, skip_special_tokens=True)

  def _surfaces(self):
    added = self._tok.get_added_tokens_decoder()
    decoder = self._json.get("decoder") or {}
    byte_level = decoder.get("type") == "ByteLevel"
    alphabet = _byte_level_alphabet()
    for index in range(self.vocab_size):
      if index in added:
        yield b"" if added[index].special else added[index].content.encode()
        continue
      piece = self._tok.id_to_token(index)
      byte = _BYTE_PIECE.fullmatch(piece)
      if byte_level and all(c in alphabet for c in piece):
        yield bytes(alphabet[c] for c in piece)
      elif byte:
        yield bytes([int(byte.group(1), 16)])
      else:
        yield piece.replace("\u2581", " ").encode()

  def save(self, path: str):
    """tokenizer.json at `path`, and tokenizer_config.json beside it naming bos / eos / pad and
    holding the chat template (so that this class and transformers' AutoTokenizer read the copy
    as the original). The config first: a process that finds tokenizer.json (written whole)
    finds its config too."""
    config = {
        f"{name}_token": None if index is None else self._tok.id_to_token(index)
        for name, index in (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id))
    }
    if self.chat_template:
      config["chat_template"] = self.chat_template
    storage.write_atomically(os.path.join(os.path.dirname(path), CONFIG_NAME),
                             json.dumps(config, indent=2).encode())
    super().save(path)

  @property
  def template_tokens(self) -> dict:
    """The token names a chat template reads (`bos_token`, `eos_token`)."""
    return {
        f"{name}_token": self._tok.id_to_token(index) or ""
        for name, index in (("bos", self.bos_id), ("eos", self.eos_id))
        if index is not None
    }
