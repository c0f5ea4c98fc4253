"""Byte-level tokenizer: 256 byte ids plus special tokens, lossless for any byte string.

A trained BPE/SentencePiece tokenizer can live beside it behind the same interface
(`encode`, `decode`, `vocab_size`, `bytes_per_token`, the special ids).
"""
import numpy as np

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


def get(name: str = "byte"):
  if name != "byte":
    from lm.errors import UserError
    raise UserError(f"unknown tokenizer {name!r}; available: 'byte'")
  return ByteTokenizer()
