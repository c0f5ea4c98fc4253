"""Lossless compression driven by the model: range coding of bytes under its next-byte predictions.

Prediction is compression: a byte the model gives probability p costs about -log2 p bits, so the coded size
tracks the model's cross-entropy ("Language Modeling Is Compression", Delétang et al. 2023).

Chunks. The input is cut into chunks of `chunk_size` bytes, each coded from a fresh context: the model sees
s, b0 .. b[n-2] at positions 0 .. n-1 and predicts b0 .. b[n-1], so a chunk holds up to max_len bytes with
learned positions. The start byte s is the byte before the chunk (a newline for the file's first chunk): the
model was trained on raw text windows without BOS, and an untrained BOS costs ~0.3 bits/byte on Tiny
Shakespeare. To have that byte decoded in time, the chunks are laid out in `rows` contiguous lanes (at most
`batch_size`); batch k codes chunk k of every lane in lockstep, one byte of each per model call (KV cache, so
linear in the length), and the batch's bytes share one range-coder stream, interleaved step by step.

Determinism. The decoder must rebuild the encoder's probability tables bit for bit, so both sides call the one
jitted KV-cache step (`_step`) with the same shapes and the same inputs: every row in the same place, the
already coded bytes, and PAD once a chunk has ended. Its float32 output goes unchanged into constriction's
categorical model, which quantises it in integer arithmetic so that every byte keeps a nonzero probability.
(A teacher-forced pass gives slightly different floats, so only `cross_entropy_bits` uses one, for reporting.)
The floats also depend on the backend and XLA version: decode where you encoded, or the CRC check says so.

Container, little-endian:
  header   magic b"LMAC", version u8, fingerprint 16 bytes (sha256 of model config and params),
           chunk_size u32, rows u32, original length u64, CRC32 of the original u32
  streams  one per batch k = 0 .. ceil(chunks / rows) - 1: u32 word count, then that many u32 words
  trailer  CRC32 of every byte before it, u32 (so truncation or any flipped byte is caught before decoding)
"""
import functools
import hashlib
import json
import struct
import zlib

import constriction
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lm import model as model_lib
from lm.errors import UserError

MAGIC = b"LMAC"
VERSION = 1
HEADER = struct.Struct("<4sB16sIIQI")
WORD = struct.Struct("<I")
MAX_BATCH = 1 << 16
START = ord("\n")  # opens the context of a lane's first chunk (see _starts)
_FAMILY = constriction.stream.model.Categorical(perfect=False)  # lazy per-row quantisation, deterministic


def fingerprint(config, params) -> bytes:
  """16 bytes naming the model: its config and every parameter's name, dtype, shape and value."""
  h = hashlib.sha256()
  h.update(json.dumps({"model": config.model.to_dict(), "tokenizer": config.tokenizer}, sort_keys=True,
                      default=str).encode())
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.digest()[:16]


@functools.partial(jax.jit, static_argnames=("model",), donate_argnums=(2,))  # update the cache in place
def _step(model, params, cache, tokens):
  """tokens [B] at position cache["index"] -> (next-byte probabilities [B, 256] float32, cache)."""
  b = tokens.shape[0]
  positions = jnp.broadcast_to(cache["index"], (b, 1)).astype(jnp.int32)
  logits, cache = model.apply({"params": params}, tokens[:, None], positions, jnp.ones((b, 1), jnp.int32),
                              cache=cache)
  # Specials never occur in a byte string: the coder's model is the byte logits, renormalised.
  return jax.nn.softmax(logits[:, 0, :256]), cache


@functools.partial(jax.jit, static_argnames=("model",))
def _chunk_nll(model, params, inputs, targets, weights):
  logits, _ = model.apply({"params": params}, inputs)
  logp = jax.nn.log_softmax(logits[..., :256])
  return -(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum()


class Coder:
  """Encode and decode byte strings with one model (an lm.setup.Setup and its params)."""

  def __init__(self, setup, params, chunk_size: int = 0, batch_size: int = 128):
    tok = setup.tokenizer
    if setup.config.tokenizer != "byte":
      raise UserError(f"compression needs the byte tokenizer (ids 0..255 are bytes), not {setup.config.tokenizer!r}")
    self.setup, self.params, self.model = setup, params, setup.model
    self.pad_id = tok.pad_id
    cfg = self.model.cfg
    self.max_chunk = cfg.max_len if cfg.position == "learned" else 1 << 20
    self.chunk_size = chunk_size or min(self.max_chunk, setup.config.data.get("seq_len", cfg.max_len))
    if not 1 <= self.chunk_size <= self.max_chunk:
      raise UserError(f"compression: chunk_size={self.chunk_size} must be in 1..{self.max_chunk} "
                      f"(model.max_len, learned positions)")
    if not 1 <= batch_size <= MAX_BATCH:
      raise UserError(f"compression: batch_size={batch_size} must be in 1..{MAX_BATCH}")
    self.batch_size = batch_size
    self.fingerprint = fingerprint(setup.config, params)

  @classmethod
  def from_run(cls, run_dir: str, **kw) -> "Coder":
    from lm import runs
    setup, params = runs.load(run_dir)
    return cls(setup, params, **kw)

  def n_params(self) -> int:
    return model_lib.count_params(self.params)

  def param_bytes(self) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(self.params))

  # --- encoding -------------------------------------------------------------------------------------------

  def encode(self, data: bytes, progress: bool = False) -> bytes:
    data = bytes(data)
    c = self.chunk_size
    n_chunks = _ceil_div(len(data), c)
    rows = self.rows(n_chunks)
    lanes = _lanes(np.frombuffer(data, np.uint8), n_chunks, rows, c, self.pad_id)
    streams = []
    with self._context(), tqdm(total=len(data), unit="B", unit_scale=True, desc="encode", disable=_bar(progress),
                               leave=False) as bar:
      for k in range(lanes.shape[1]):
        lens = _lens(len(data), rows, lanes.shape[1], k, c)
        starts = _starts(lanes, n_chunks, k)
        streams.append(self._encode_batch(lanes[:, k], lens, starts))
        bar.update(int(lens.sum()))
    header = HEADER.pack(MAGIC, VERSION, self.fingerprint, c, rows, len(data), zlib.crc32(data))
    body = header + b"".join(WORD.pack(len(s)) + s.astype("<u4").tobytes() for s in streams)
    return body + WORD.pack(zlib.crc32(body))

  def _encode_batch(self, grid, lens, starts):
    probs = self._batch_probs(grid, lens, starts)
    encoder = constriction.stream.queue.RangeEncoder()
    live = [lens > t for t in range(len(probs))]
    encoder.encode(np.concatenate([grid[m, t] for t, m in enumerate(live)]), _FAMILY,
                   np.concatenate([p[m] for p, m in zip(probs, live)]))
    return encoder.get_compressed()

  def _batch_probs(self, grid, lens, starts) -> list:
    """[steps] of [rows, 256]: the distribution each byte of the batch is coded with (grid[:, t] under
    probs[t]), from the same jitted step the decoder runs."""
    # Every input is known up front, so all steps are dispatched before any result is read back.
    cache = model_lib.init_cache(self.model.cfg, grid.shape[0], grid.shape[1])
    tokens, outs = starts, []
    for t in range(int(lens.max())):
      probs, cache = _step(self.model, self.params, cache, jnp.asarray(tokens))
      outs.append(probs)
      tokens = grid[:, t]
    return [np.asarray(p) for p in outs]

  def byte_probabilities(self, data: bytes) -> np.ndarray:
    """[len(data), 256]: the distribution the encoder codes each byte of `data` with, in file order."""
    data = bytes(data)
    c = self.chunk_size
    n_chunks = _ceil_div(len(data), c)
    rows = self.rows(n_chunks)
    lanes = _lanes(np.frombuffer(data, np.uint8), n_chunks, rows, c, self.pad_id)
    out = np.zeros((rows, lanes.shape[1], c, 256), np.float32)
    with self._context():
      for k in range(lanes.shape[1]):
        lens = _lens(len(data), rows, lanes.shape[1], k, c)
        for t, p in enumerate(self._batch_probs(lanes[:, k], lens, _starts(lanes, n_chunks, k))):
          out[:, k, t] = p
    return out.reshape(-1, 256)[:len(data)]

  # --- decoding -------------------------------------------------------------------------------------------

  def decode(self, blob: bytes, progress: bool = False) -> bytes:
    c, rows, length, crc, streams = self._parse(bytes(blob))
    n_chunks = _ceil_div(length, c)
    lanes = np.full((rows, len(streams), c), self.pad_id, np.int32)
    with self._context(), tqdm(total=length, unit="B", unit_scale=True, desc="decode", disable=_bar(progress),
                               leave=False) as bar:
      for k, words in enumerate(streams):
        lens = _lens(length, rows, len(streams), k, c)
        lanes[:, k] = self._decode_batch(words, lens, _starts(lanes, n_chunks, k), c)
        bar.update(int(lens.sum()))
    out = lanes.reshape(-1)[:length].astype(np.uint8).tobytes()
    if zlib.crc32(out) != crc:
      raise UserError("decoded bytes fail the original's CRC32: this machine's model predictions differ from the "
                      "encoder's (another backend or JAX/XLA version?); nothing was written")
    return out

  def _decode_batch(self, words, lens, starts, chunk):
    decoder = constriction.stream.queue.RangeDecoder(words)
    cache = model_lib.init_cache(self.model.cfg, len(lens), chunk)
    grid = np.full((len(lens), chunk), self.pad_id, np.int32)
    tokens = starts
    for t in range(int(lens.max())):
      probs, cache = _step(self.model, self.params, cache, jnp.asarray(tokens))
      live = lens > t
      try:
        grid[live, t] = decoder.decode(_FAMILY, np.asarray(probs)[live])
      except Exception as e:  # only reachable past a matching CRC, i.e. a crafted file
        raise UserError(f"compressed stream is malformed ({type(e).__name__}); nothing was written") from None
      tokens = grid[:, t]
    return grid

  def _parse(self, blob: bytes):
    """(chunk_size, rows, length, crc32, streams) of a container, after checking it end to end."""
    if len(blob) < len(MAGIC) or blob[:len(MAGIC)] != MAGIC:
      raise UserError("not an lm.compress file (bad magic bytes)")
    if len(blob) < HEADER.size + WORD.size or WORD.unpack(blob[-WORD.size:])[0] != zlib.crc32(blob[:-WORD.size]):
      raise UserError("compressed file is truncated or corrupt (checksum mismatch); nothing was written")
    _, version, fp, chunk, rows, length, crc = HEADER.unpack_from(blob)
    if version != VERSION:
      raise UserError(f"compressed file has format version {version}; this lm reads version {VERSION}")
    if fp != self.fingerprint:
      raise UserError(f"file was encoded with a different model (fingerprint {fp.hex()}, this checkpoint "
                      f"{self.fingerprint.hex()}); decode it with the checkpoint that encoded it")
    if not 1 <= chunk <= self.max_chunk or not 1 <= rows <= MAX_BATCH:
      raise UserError(f"compressed header is invalid for this model (chunk_size={chunk}, batch_size={rows})")
    n_streams = _ceil_div(_ceil_div(length, chunk), rows)
    streams, pos, end = [], HEADER.size, len(blob) - WORD.size
    for _ in range(n_streams):  # the checks below only fail for a crafted file whose checksum matches
      if pos + WORD.size > end:
        raise UserError("compressed file is missing streams")
      (n,) = WORD.unpack_from(blob, pos)
      pos += WORD.size
      if pos + 4 * n > end:
        raise UserError("compressed stream runs past the end of the file")
      streams.append(np.frombuffer(blob, "<u4", n, pos).astype(np.uint32))
      pos += 4 * n
    if pos != end:
      raise UserError(f"compressed file has {end - pos} unexpected bytes after its streams")
    return chunk, rows, length, crc, streams

  # --- shared ---------------------------------------------------------------------------------------------

  def rows(self, n_chunks: int) -> int:
    """Lanes (rows per model call): at most batch_size, spread so every lane but the last is full."""
    return _ceil_div(n_chunks, _ceil_div(n_chunks, self.batch_size)) if n_chunks else 1

  def _context(self):
    return self.setup.use()

  def cross_entropy_bits(self, data: bytes, rows_per_call: int = 64) -> float:
    """The model's summed cross-entropy (bits) of `data` with the coder's chunks, start bytes and byte softmax,
    from a teacher-forced pass: what an ideal coder would spend."""
    data = np.frombuffer(bytes(data), np.uint8)
    c = self.chunk_size
    n_chunks = _ceil_div(len(data), c)
    if not n_chunks:
      return 0.0
    rows = self.rows(n_chunks)
    lanes = _lanes(data, n_chunks, rows, c, self.pad_id)
    n_batches = lanes.shape[1]
    starts = np.stack([_starts(lanes, n_chunks, k) for k in range(n_batches)], axis=1)
    lens = np.stack([_lens(len(data), rows, n_batches, k, c) for k in range(n_batches)], axis=1)
    inputs = np.concatenate([starts[..., None], lanes[..., :-1]], axis=-1).reshape(-1, c)
    weights = (np.arange(c) < lens.reshape(-1, 1)).astype(np.float32)
    targets = np.where(weights > 0, lanes.reshape(-1, c), 0)  # PAD is outside the 256-way softmax
    total = 0.0
    with self._context():
      for i in range(0, len(inputs), rows_per_call):
        part = [np.resize(x[i:i + rows_per_call], (rows_per_call, c)) for x in (inputs, targets, weights)]
        part[2][len(inputs) - i:] = 0  # np.resize repeats rows to fill the last call: weigh those zero
        total += float(_chunk_nll(self.model, self.params, *map(jnp.asarray, part)))
    return total / np.log(2)


def _lanes(data, n_chunks: int, rows: int, c: int, pad_id: int):
  """[rows, n_batches, c] int32: the input cut into `rows` contiguous lanes of chunks, PAD past the end.

  Batch k codes chunk k of every lane, so when a chunk starts, the chunk before it in the file (the previous
  one in its lane) is already coded, and its last byte can open the new chunk's context."""
  n_batches = _ceil_div(n_chunks, rows)
  flat = np.full(rows * n_batches * c, pad_id, np.int32)
  flat[:len(data)] = data
  return flat.reshape(rows, n_batches, c)


def _lens(length: int, rows: int, n_batches: int, k: int, c: int):
  """[rows] bytes in chunk k of each lane (0 for padding rows)."""
  first_byte = (np.arange(rows) * n_batches + k) * c
  return np.clip(length - first_byte, 0, c)


def _starts(lanes, n_chunks: int, k: int):
  """[rows] first input of chunk k of each lane: the byte before the chunk, or START for a lane's first chunk.

  The model was trained on windows of raw text without BOS, so a real byte (or a newline) is the context it
  knows; BOS costs ~0.3 bits/byte more on Tiny Shakespeare (3.10 against 2.77)."""
  rows, n_batches, _ = lanes.shape
  starts = np.full(rows, START, np.int32)
  if k:
    real = np.arange(rows) * n_batches + k < n_chunks
    starts[real] = lanes[real, k - 1, -1]
  return starts


def _bar(progress: bool):
  return None if progress else True  # None: tqdm shows the bar on a terminal only


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)
