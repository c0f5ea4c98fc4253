"""Tokenizers behind one interface: `encode`, `decode`, `decode_bytes`, `vocab_size`, `bytes_per_token`, and
`pad_id`, `bos_id`, `eos_id`, `role_ids` (plus `chat_template` where a tokenizer has one, read by lm/chat.py).

config.tokenizer picks one (`get`):
  "byte"                   256 byte ids plus special tokens, lossless for any byte string (the default)
  "hf:<dir or file>"       a checkpoint's tokenizer.json (or tokenizer.model) and its tokenizer_config.json
                           (special tokens, chat template): lm/hf/tokenizer.py
  "sentencepiece:<file>"   a SentencePiece model
  "bpe:<vocab size>"       byte-level BPE trained on data.* 's training split (cached): lm/bpe.py
"""
import numpy as np

from lm.errors import UserError

SPECIALS = ("<pad>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>")


class ByteTokenizer:
  """Token id i < 256 is the byte i; ids 256.. are SPECIALS, in order."""

  def __init__(self):
    self.special_ids = {name: 256 + i for i, name in enumerate(SPECIALS)}
    self.pad_id = self.special_ids["<pad>"]
    self.bos_id = self.special_ids["<bos>"]
    self.eos_id = self.special_ids["<eos>"]
    self.role_ids = {r: self.special_ids[f"<{r}>"] for r in ("system", "user", "assistant")}
    self.vocab_size = 256 + len(SPECIALS)

  def encode(self, data, bos=False, eos=False) -> np.ndarray:
    if isinstance(data, str):
      data = data.encode("utf-8")
    ids = np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int32)
    parts = ([np.array([self.bos_id], np.int32)] if bos else []) + [ids] + (
        [np.array([self.eos_id], np.int32)] if eos else [])
    return np.concatenate(parts) if len(parts) > 1 else ids

  def decode_bytes(self, ids) -> bytes:
    """Bytes of the byte tokens; special tokens carry no bytes and are dropped."""
    ids = np.asarray(ids).reshape(-1)
    return ids[ids < 256].astype(np.uint8).tobytes()

  def decode(self, ids) -> str:
    return self.decode_bytes(ids).decode("utf-8", errors="replace")

  def bytes_per_token(self) -> np.ndarray:
    """[vocab] number of bytes each id stands for, so nats/token convert exactly to bits/byte."""
    return (np.arange(self.vocab_size) < 256).astype(np.int32)


KINDS = "'byte', 'hf:<dir or tokenizer.json>', 'sentencepiece:<file.model>' or 'bpe:<vocab size>'"


def get(spec: str = "byte", data_cfg=None):
  """The tokenizer config.tokenizer names (`data_cfg`: the text bpe: trains on)."""
  kind, colon, arg = str(spec).partition(":")
  if spec == "byte":
    return ByteTokenizer()
  if colon and arg and kind in ("hf", "sentencepiece"):
    from lm.hf import tokenizer as hf_tokenizer
    return hf_tokenizer.load(arg) if kind == "hf" else hf_tokenizer.SentencePieceTokenizer(_existing(arg))
  if colon and kind == "bpe":
    if not arg.isdigit():
      raise UserError(f"tokenizer={spec!r}: bpe:<vocab size> takes a number of tokens, e.g. bpe:1024")
    if data_cfg is None:
      raise UserError(f"tokenizer={spec!r} trains on the config's data.*, which this command has none of")
    from lm import bpe
    return bpe.get(int(arg), data_cfg)
  raise UserError(f"tokenizer={spec!r} is not a tokenizer; use {KINDS}")


def _existing(path: str) -> str:
  import os
  if not os.path.isfile(path):
    raise UserError(f"tokenizer: no such file {path!r}")
  return path


def check_fits(tokenizer, spec: str, vocab_size: int):
  """Every token id must have a row in the model's embedding (which may be padded beyond the vocabulary)."""
  if tokenizer.vocab_size > vocab_size:
    raise UserError(f"tokenizer {spec!r} has {tokenizer.vocab_size} tokens but model.vocab_size={vocab_size}; "
                    f"set --config.model.vocab_size to at least {tokenizer.vocab_size} (a multiple of 8 shards "
                    "evenly) or use the model's own tokenizer")
