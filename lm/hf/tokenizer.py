"""Trained tokenizers behind lm.tokenizer's interface: a `tokenizer.json` (the `tokenizers` library) or a
SentencePiece model, with the special tokens and chat template of the directory's tokenizer_config.json.

`bytes_per_token` is what bits per byte divides by, so it is read off each token's own bytes: the byte-level
alphabet for byte-level BPE (GPT-2, Llama 3, Qwen2: exact), and the piece with "▁" as a space and <0xNN> as
one byte for SentencePiece-style vocabularies (Llama 2, Mistral), whose dummy prefix adds one space byte per
encoded text that decoding drops. Special tokens stand for no bytes.
"""
import functools
import json
import os
import re

import numpy as np

from lm import chat
from lm.errors import UserError
from lm.tokenizer import SPECIALS

ROLES = ("system", "user", "assistant")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def byte_alphabet() -> dict:
  """GPT-2's byte -> printable character map that byte-level BPE vocabularies are written in."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  extra = [b for b in range(256) if b not in keep]
  return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def _token_text(value):
  """A special token as tokenizer_config.json writes it: a string, {"content": ...} or null."""
  return value.get("content") if isinstance(value, dict) else value


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}") from None


class TextTokenizer:
  """What HF and SentencePiece tokenizers share: special ids, role ids, the chat template, byte accounting.

  Subclasses set `vocab_size`, `_special` ({token text: id} of special tokens) and `_bytes` (list of each id's
  bytes), and implement `_encode(text) -> list of ids` (special tokens in the text become their ids) and
  `decode`."""

  def _setup(self, directory: str, defaults: dict | None = None):
    """Special tokens from the directory's tokenizer_config.json (or special_tokens_map.json), else `defaults`
    ({"bos": text, ...}: a SentencePiece model's own), else the names lm.tokenizer uses (<bos>, <eos>, <pad>)."""
    config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    config = {**_read_json(os.path.join(directory, "special_tokens_map.json")), **config}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
      template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja = os.path.join(directory, "chat_template.jinja")  # transformers 5 writes the template beside
    if template is None and os.path.exists(jinja):
      with open(jinja) as f:
        template = f.read()
    self.chat_template = template or None
    tokens = {k: _token_text(config.get(f"{k}_token")) for k in ("bos", "eos", "pad", "unk")}
    for k in ("bos", "eos", "pad"):
      if tokens[k] is None:
        tokens[k] = (defaults or {}).get(k) or (f"<{k}>" if f"<{k}>" in self._special else None)
    self.special_tokens = {f"{k}_token": v for k, v in tokens.items() if v is not None}
    ids = {k: self._special.get(v, self._id_of(v)) if v is not None else None for k, v in tokens.items()}
    self.bos_id = ids["bos"]
    self.eos_id = ids["eos"]
    roles = {r: self._special.get(f"<{r}>") for r in ROLES}
    self.role_ids = roles if all(v is not None for v in roles.values()) else {}
    if self.chat_template:  # generation stops where the template ends an assistant turn
      turn_end = chat.turn_end_id(self)
      self.eos_id = turn_end if turn_end is not None else self.eos_id
    if self.eos_id is None:
      raise UserError(f"tokenizer {directory}: no end-of-sequence token (eos_token in tokenizer_config.json)")
    self.pad_id = ids["pad"] if ids["pad"] is not None else self.eos_id

  def _id_of(self, text):
    ids = self._encode(text)
    return ids[0] if len(ids) == 1 else None

  def encode(self, data, bos=False, eos=False) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
      ids = self._encode_bytes(bytes(data))
    else:
      ids = self._encode(data)
    if bos:
      if self.bos_id is None:
        raise UserError("this tokenizer has no beginning-of-sequence token")
      ids = [self.bos_id, *ids]
    return np.asarray([*ids, *([self.eos_id] if eos else [])], np.int32)

  def _encode_bytes(self, data: bytes) -> list:
    """Bytes that are not UTF-8 become their byte tokens where the vocabulary has them (byte-level BPE, byte
    fallback), so any byte string round-trips; otherwise they are an error."""
    text = data.decode("utf-8", errors="surrogateescape")
    if not any("\udc80" <= c <= "\udcff" for c in text):
      return self._encode(text)
    ids = []
    for part in re.split("([\udc80-\udcff])", text):
      if len(part) == 1 and "\udc80" <= part <= "\udcff":
        byte = ord(part) - 0xDC00
        if byte not in self._byte_ids:
          raise UserError(f"byte {byte:#04x} is not UTF-8 text and this tokenizer has no token for it")
        ids.append(self._byte_ids[byte])
      elif part:
        ids += self._encode(part)
    return ids

  @functools.cached_property
  def _byte_ids(self) -> dict:
    """{byte: id} of the tokens that stand for exactly one (non-UTF-8) byte."""
    out = {}
    for i, b in enumerate(self._bytes):
      if len(b) == 1 and b[0] >= 0x80 and i not in self._special.values():
        out.setdefault(b[0], i)
    return out

  def decode_bytes(self, ids) -> bytes:
    """The bytes the tokens stand for (special tokens dropped)."""
    special = set(self._special.values())
    return b"".join(self._bytes[i] for i in np.asarray(ids).reshape(-1).tolist()
                    if 0 <= i < len(self._bytes) and i not in special)

  def bytes_per_token(self) -> np.ndarray:
    return np.asarray([len(b) for b in self._bytes], np.int32)


class HFTokenizer(TextTokenizer):
  """A tokenizer.json through the `tokenizers` library."""

  def __init__(self, file: str):
    import tokenizers
    try:
      self.tok = tokenizers.Tokenizer.from_file(file)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"cannot read tokenizer {file}: {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None
    spec = json.loads(self.tok.to_str())
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    self._special = {c: t["id"] for c, t in added.items() if t.get("special")}
    vocab = self.tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1
    pieces = {i: p for p, i in vocab.items()}
    token_bytes = _piece_bytes(spec.get("decoder"))
    self._bytes = [b"" if pieces.get(i) is None or pieces[i] in self._special else
                   pieces[i].encode("utf-8") if pieces[i] in added else token_bytes(pieces[i])
                   for i in range(self.vocab_size)]
    self._setup(os.path.dirname(os.path.abspath(file)))

  def _encode(self, text: str) -> list:
    return self.tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    ids = [i for i in np.asarray(ids).reshape(-1).tolist() if 0 <= i < self.vocab_size]
    return self.tok.decode(ids, skip_special_tokens=True)


def _decoder_types(decoder) -> set:
  if not decoder:
    return set()
  if decoder.get("type") == "Sequence":
    return {t for d in decoder.get("decoders", []) for t in _decoder_types(d)}
  return {decoder.get("type")}


def _piece_bytes(decoder):
  """piece -> the bytes it stands for, as the tokenizer.json's decoder reads pieces."""
  types = _decoder_types(decoder)
  if "ByteLevel" in types:
    inverse = {c: b for b, c in byte_alphabet().items()}
    return lambda piece: bytes(inverse[c] for c in piece) if all(c in inverse for c in piece) else piece.encode()
  return functools.partial(_sentencepiece_bytes, byte_fallback="ByteFallback" in types)


def _sentencepiece_bytes(piece: str, byte_fallback: bool = True) -> bytes:
  m = _BYTE_PIECE.fullmatch(piece)
  if m and byte_fallback:
    return bytes([int(m.group(1), 16)])
  return piece.replace("▁", " ").encode("utf-8")


class SentencePieceTokenizer(TextTokenizer):
  """A SentencePiece model file (special tokens in text are split out first, as transformers does)."""

  def __init__(self, file: str):
    import sentencepiece
    try:
      self.sp = sentencepiece.SentencePieceProcessor(model_file=file)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"cannot read SentencePiece model {file}: {(str(e).splitlines() or [''])[0][:200]}") from None
    self.vocab_size = self.sp.get_piece_size()
    sp = self.sp
    self._special = {sp.id_to_piece(i): i for i in range(self.vocab_size)
                     if sp.is_control(i) or sp.is_unknown(i)}
    self._bytes = [b"" if i in self._special.values() else bytes([int(_BYTE_PIECE.fullmatch(sp.id_to_piece(i))[1], 16)])
                   if sp.is_byte(i) else sp.id_to_piece(i).replace("▁", " ").encode("utf-8")
                   for i in range(self.vocab_size)]
    self._split = re.compile("(" + "|".join(map(re.escape, sorted(self._special, key=len, reverse=True))) + ")") \
        if self._special else None
    own = {"bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()}
    self._setup(os.path.dirname(os.path.abspath(file)), {k: sp.id_to_piece(i) for k, i in own.items() if i >= 0})

  def _encode(self, text: str) -> list:
    if self._split is None:
      return list(self.sp.encode(text))
    ids = []
    for part in self._split.split(text):
      if part in self._special:
        ids.append(self._special[part])
      elif part:
        ids += self.sp.encode(part)
    return ids

  def decode(self, ids) -> str:
    special = set(self._special.values())
    return self.sp.decode([i for i in np.asarray(ids).reshape(-1).tolist() if 0 <= i < self.vocab_size
                           and i not in special])


def load(path: str) -> TextTokenizer:
  """A tokenizer.json, a SentencePiece .model, or a directory holding either (tokenizer.json preferred)."""
  if os.path.isdir(path):
    for name, cls in (("tokenizer.json", HFTokenizer), ("tokenizer.model", SentencePieceTokenizer)):
      if os.path.exists(os.path.join(path, name)):
        return cls(os.path.join(path, name))
    raise UserError(f"tokenizer: {path} holds neither tokenizer.json nor tokenizer.model")
  if not os.path.exists(path):
    raise UserError(f"tokenizer: no such file or directory {path!r}")
  return SentencePieceTokenizer(path) if path.endswith(".model") else HFTokenizer(path)


# ---- Export: a tokenizer beside an exported model, in the files transformers reads ----


def byte_tokenizer_json():
  """lm.tokenizer.ByteTokenizer as a `tokenizers` Tokenizer: ids 0-255 are the bytes (GPT-2's byte alphabet,
  no merges), then SPECIALS; the same ids for any text."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  alphabet = byte_alphabet()
  tok = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(list(SPECIALS))
  return tok


def save(tokenizer, out_dir: str, max_len: int):
  """Write `tokenizer` (byte, tokenizer.json or SentencePiece) into an exported model directory, with its special
  tokens and chat template in tokenizer_config.json (the native template for vocabularies with role tokens)."""
  if isinstance(tokenizer, HFTokenizer):
    tokenizer.tok.save(os.path.join(out_dir, "tokenizer.json"))
    tokens, template, cls = tokenizer.special_tokens, tokenizer.chat_template, "PreTrainedTokenizerFast"
  elif isinstance(tokenizer, SentencePieceTokenizer):
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
      f.write(tokenizer.sp.serialized_model_proto())
    tokens, template, cls = tokenizer.special_tokens, tokenizer.chat_template, "LlamaTokenizer"
  else:
    byte_tokenizer_json().save(os.path.join(out_dir, "tokenizer.json"))
    tokens, template, cls = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, None, \
        "PreTrainedTokenizerFast"
  if template is None and getattr(tokenizer, "role_ids", None):
    template = chat.NATIVE_TEMPLATE
  config = {"tokenizer_class": cls, "model_max_length": max_len, "clean_up_tokenization_spaces": False, **tokens}
  if template:
    config["chat_template"] = template
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
