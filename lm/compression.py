"""Lossless compression driven by the model: range coding of bytes under its next-byte predictions.

Prediction is compression: a byte the model gives probability p costs about -log2 p bits, so the coded size
tracks the model's cross-entropy ("Language Modeling Is Compression", Delétang et al. 2023).

Lanes and windows. The input is cut into chunks of `chunk_size` (C) bytes, laid out in `rows` contiguous lanes
(at most `batch_size`); batch k codes chunk k of every lane in lockstep, one byte of each per model call (KV
cache, so linear in the length). A chunk's context opens with the `context` (X) bytes before it in its lane
(the end of the lane's previous chunk, already coded), fed in one call at positions 0..X-1, so every byte is
predicted from X..X+C-1 bytes of context (X + C - 1 <= max_len with learned positions). A lane's first chunk
opens with one START byte: the model was trained on raw text windows without BOS, and an untrained BOS costs
~0.3 bits/byte on Tiny Shakespeare.

Bits. Each byte is coded as 8 binary decisions (lm/context_mixing.py): under the network's distribution alone,
or mixed with adaptive order-k, word and match models of the file (`mix`). All bits share one constriction
range-coder stream.

Never larger than stored. Per chunk, the encoder compares the model's cost with 8 bits per byte and codes the
chunk's bits at p = 1/2 instead when that is cheaper (a flag per chunk, coded with an adaptive probability, so
a file that never falls back pays a few bits in all). And per file, `encode` keeps the smallest of the model's
container and stored / zstd -19 / bzip2 -9 / xz -9e containers (10 bytes of framing): no input grows by more
than 10 bytes.

Learning while coding (`adapt`, lm/dynamic_eval.py): after each batch, encoder and decoder take the same
optimiser step(s) on that batch's chunks, so later chunks are coded by a model adapted to the file.

Determinism. The decoder must rebuild the encoder's probabilities bit for bit, so both sides call the same
jitted functions (`_feed`, the updater) with the same shapes and inputs in the same order: every row in the
same place, the already coded bytes, PAD once a chunk has ended. The float32 distribution enters the integer
bit predictors by an exact scaling, and the mixer is integer arithmetic. The floats depend on the backend,
device, CPU instruction set, core count and JAX/XLA version, so the header records them and decoding refuses
a machine that differs (`allow_other_machine` tries anyway; the original's CRC32 still guards the output).

Container, little-endian:
  frame    magic b"LMAC", version u8, mode u8 (0 model, 1 stored, 2 zstd, 3 bzip2, 4 xz); then
  mode 0   fingerprint 16 bytes (sha256 of model config and params), length u64, CRC32 of the original u32,
           chunk_size u16, context u16, rows u32, adaptation (optimizer u8 (0: off), params u8, steps u8,
           lr f32), mix (on u8, MixSettings.FORMAT), machine (digest 8 bytes, name: u8 length + UTF-8),
           then the range-coder stream's u32 words to the trailer
  mode 1-4 the original, stored or compressed by that codec
  trailer  CRC32 of every byte before it, u32 (so truncation or any flipped byte is caught before decoding)
"""
import bz2
import dataclasses
import functools
import hashlib
import json
import lzma
import os
import platform
import struct
import zlib

import constriction
import jax
import jax.numpy as jnp
import numpy as np
import zstandard
from tqdm import tqdm

from lm import context_mixing as cm
from lm import dynamic_eval
from lm import model as model_lib
from lm.errors import UserError

MAGIC = b"LMAC"
VERSION = 2
FRAME = struct.Struct("<4sBB")
WORD = struct.Struct("<I")
MODEL, STORED, ZSTD, BZIP2, XZ = range(5)
MODEL_HEADER = struct.Struct("<16sQIHHI" "BBBf" "B" + cm.MixSettings.FORMAT[1:] + "8sB")
MAX_BATCH = 1 << 12  # lanes; the context mixer's int32 slots rely on it
# Defaults of `python -m lm.compress encode`; their sizes and speeds on five inputs: experiments/COMPRESSION_NOTES.md.
DEFAULT_ADAPT = dynamic_eval.Adaptation(lr=1e-4, steps=1, optimizer="adam", params="all")
DEFAULT_MIX = cm.MixSettings()
DEFAULT_BATCH = 32
START = ord("\n")  # opens the context of a lane's first chunk
HALF = cm.ONE // 2  # a fallen-back chunk's bits: exactly 1 bit each
_BIT = constriction.stream.model.Bernoulli(perfect=False)
_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
CODECS = {  # mode: (compress, decompress); deterministic decoders, so any machine restores these
    STORED: (bytes, bytes),
    ZSTD: (lambda b: zstandard.ZstdCompressor(level=19).compress(b),
           lambda b: zstandard.ZstdDecompressor().decompress(b)),
    BZIP2: (lambda b: bz2.compress(b, 9), bz2.decompress),
    XZ: (lambda b: lzma.compress(b, lzma.FORMAT_RAW, filters=_XZ_FILTERS),
         lambda b: lzma.decompress(b, lzma.FORMAT_RAW, filters=_XZ_FILTERS)),
}
CODEC_NAMES = {MODEL: "model", STORED: "stored", ZSTD: "zstd -19", BZIP2: "bzip2 -9", XZ: "xz -9e"}


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


def machine() -> tuple:
  """(name, digest): what the model's float32 results depend on. The name (backend, device, JAX and jaxlib
  versions) is stored readably; the digest also covers the CPU's model and instruction set, the cores XLA
  may use and XLA_FLAGS (XLA:CPU vectorises and partitions float sums by them)."""
  import jaxlib
  device = jax.devices()[0]
  name = f"{jax.default_backend()} {device.device_kind} jax {jax.__version__} jaxlib {jaxlib.__version__}"
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  detail = [name, platform.machine(), str(len(jax.devices())), str(cores), os.environ.get("XLA_FLAGS", "")]
  try:
    with open("/proc/cpuinfo") as f:
      detail += sorted({line.strip() for line in f if line.startswith(("model name", "flags"))})
  except OSError:
    detail.append(platform.processor())
  return name, hashlib.sha256("\n".join(detail).encode()).digest()[:8]


def check_deterministic(adaptation):
  """Refuse adaptive coding where XLA's results may vary from run to run (see lm/dynamic_eval.py)."""
  if adaptation.on and jax.default_backend() == "gpu" and \
      "--xla_gpu_deterministic_ops=true" not in os.environ.get("XLA_FLAGS", ""):
    raise UserError("adaptive compression on GPU needs XLA_FLAGS=--xla_gpu_deterministic_ops=true (floating-point "
                    "atomics otherwise change the updates from run to run); set it or use --adapt_lr=0")


@functools.partial(jax.jit, static_argnames=("model",), donate_argnums=(2,))  # update the cache in place
def _feed(model, params, cache, tokens):
  """tokens [B, T] at positions cache["index"].. -> (next-byte probabilities [B, 256] float32 after the last
  token, cache)."""
  b, t = tokens.shape
  positions = jnp.broadcast_to(cache["index"] + jnp.arange(t, dtype=jnp.int32), (b, t))
  logits, cache = model.apply({"params": params}, tokens, positions, jnp.ones((b, t), jnp.int32), cache=cache)
  # Specials never occur in a byte string: the coder's model is the byte logits, renormalised.
  return jax.nn.softmax(logits[:, -1, :256]), cache


@functools.partial(jax.jit, static_argnames=("model",))
def _window_nll(model, params, inputs, targets, weights):
  logits, _ = model.apply({"params": params}, inputs)
  logp = jax.nn.log_softmax(logits[..., :256])
  return -(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum()


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each byte sits: `rows` lanes of `n_batches` chunks of `chunk` bytes, `context` bytes before each."""
  length: int
  chunk: int
  context: int
  rows: int

  @property
  def n_chunks(self) -> int:
    return _ceil_div(self.length, self.chunk)

  @property
  def n_batches(self) -> int:
    return _ceil_div(self.n_chunks, self.rows)

  @property
  def window(self) -> int:
    """Model positions a batch uses: its context, then all but the last byte of its chunks."""
    return self.context + self.chunk - 1

  def lanes(self, data=None, pad_id: int = 0):
    """[rows, n_batches, chunk] int32: the input in contiguous lanes, PAD past its end."""
    flat = np.full(self.rows * self.n_batches * self.chunk, pad_id, np.int32)
    if data is not None:
      flat[:self.length] = np.frombuffer(data, np.uint8)
    return flat.reshape(self.rows, self.n_batches, self.chunk)

  def lens(self, k: int):
    """[rows] bytes in chunk k of each lane (0 for rows past the end)."""
    first_byte = (np.arange(self.rows) * self.n_batches + k) * self.chunk
    return np.clip(self.length - first_byte, 0, self.chunk)

  def positions(self, k: int, t: int):
    """[rows] file position of byte t of chunk k in each lane (past the end for rows without one)."""
    return (np.arange(self.rows) * self.n_batches + k) * self.chunk + t

  def prefix(self, lanes, k: int):
    """[rows, P] what opens batch k's context: START for a lane's first chunk, else the previous X bytes."""
    if k == 0:
      return np.full((self.rows, 1), START, np.int32)
    return lanes[:, k - 1, self.chunk - self.context:]

  def windows(self, lanes, k: int, pad_id: int):
    """(inputs, targets, weights), each [rows, window]: batch k as teacher-forced rows at the positions it is
    coded at, targets weighted 1 where a byte of the chunk is predicted."""
    prefix = self.prefix(lanes, k)
    inputs = np.full((self.rows, self.window), pad_id, np.int32)
    seq = np.concatenate([prefix, lanes[:, k]], axis=1)[:, :self.window]
    inputs[:, :seq.shape[1]] = seq
    p = prefix.shape[1]
    targets = np.zeros((self.rows, self.window), np.int32)
    weights = np.zeros((self.rows, self.window), np.float32)
    targets[:, p - 1:p - 1 + self.chunk] = lanes[:, k]
    weights[:, p - 1:p - 1 + self.chunk] = np.arange(self.chunk) < self.lens(k)[:, None]
    return inputs, np.where(weights > 0, targets, 0), weights


class Coder:
  """Encode and decode byte strings with one model (an lm.setup.Setup and its params).

  chunk_size, context: bytes coded per chunk and bytes of context before each (0: the model's max_len, split in
  halves; with learned positions context + chunk_size - 1 <= max_len). batch_size: most lanes per model call
  (fewer lanes: more, smaller adaptation blocks, slower). adapt: lm.dynamic_eval.Adaptation (lr 0: static).
  mix: lm.context_mixing.MixSettings, or None for the network alone. Decoding takes every setting from the
  file; only the model must match."""

  def __init__(self, setup, params, chunk_size: int = 0, context: int = 0, batch_size: int = DEFAULT_BATCH,
               adapt: dynamic_eval.Adaptation = dynamic_eval.Adaptation(), mix: cm.MixSettings | None = None,
               allow_other_machine: bool = False):
    tok = setup.tokenizer
    if setup.config.tokenizer != "byte":
      raise UserError(f"compression needs the byte tokenizer (ids 0..255 are bytes), not {setup.config.tokenizer!r}")
    self.setup, self.params, self.model = setup, params, setup.model
    self.pad_id = tok.pad_id
    cfg = self.model.cfg
    self.max_window = cfg.max_len if cfg.position == "learned" else 1 << 16
    if not chunk_size:
      chunk_size = max(1, (min(cfg.max_len, setup.config.data.get("seq_len", cfg.max_len)) + 1) // 2)
    context = context or max(1, min(chunk_size, self.max_window + 1 - chunk_size))
    self.chunk_size, self.context = chunk_size, context
    self._check_layout(chunk_size, context)
    if not 1 <= batch_size <= MAX_BATCH:
      raise UserError(f"compression: batch_size={batch_size} must be in 1..{MAX_BATCH}")
    problems = adapt.problems() + (mix.problems() if mix else [])
    if problems:
      raise UserError("compression: " + "; ".join(problems))
    # the header stores lr as float32: code with exactly the value the decoder will read
    self.batch_size, self.adapt, self.mix = batch_size, dataclasses.replace(adapt, lr=float(np.float32(adapt.lr))), mix
    self.allow_other_machine = allow_other_machine
    self.fingerprint = fingerprint(setup.config, params)

  def _check_layout(self, chunk: int, context: int):
    if not (1 <= chunk <= 65535 and 1 <= context <= min(chunk, 65535) and context + chunk - 1 <= self.max_window):
      raise UserError(f"compression: chunk_size={chunk} and context={context} need 1 <= context <= chunk_size and "
                      f"context + chunk_size - 1 <= {self.max_window} (model.max_len, learned positions)")

  @classmethod
  def from_run(cls, run_dir: str, **kw) -> "Coder":
    from lm import runs
    setup, params = runs.load(run_dir)
    return cls(setup, params, **kw)

  def n_params(self) -> int:
    return model_lib.count_params(self.params)

  def param_bytes(self) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(self.params))

  def layout(self, length: int) -> Layout:
    n_chunks = _ceil_div(length, self.chunk_size)
    rows = _ceil_div(n_chunks, _ceil_div(n_chunks, self.batch_size)) if n_chunks else 1  # all lanes but one full
    return Layout(length, self.chunk_size, self.context, rows)

  # --- encoding -------------------------------------------------------------------------------------------

  def encode(self, data: bytes, progress: bool = False, fallback: bool = True) -> bytes:
    """The smallest container: the model's, or (with `fallback`) stored, zstd, bzip2 or xz."""
    data = bytes(data)
    candidates = codec_containers(data) if fallback else []
    if data or not fallback:
      candidates.append(self._encode_model(data, progress))
    return min(candidates, key=len)

  def _encode_model(self, data: bytes, progress: bool) -> bytes:
    check_deterministic(self.adapt)
    lay = self.layout(len(data))
    lanes = lay.lanes(data, self.pad_id)
    bits, probs = [], []
    mix = self.mix and dataclasses.replace(self.mix, table_bits=min(self.mix.table_bits, _table_bits(len(data))))
    with self._context(), _bar("encode", len(data), progress) as bar:
      run = _Run(self, lay, self.adapt, mix)
      for k in range(lay.n_batches):
        lens = lay.lens(k)
        steps = run.batch_probs(lanes, k)
        rec = _Recorder(lanes[:, k], lens)
        run.code_batch(k, lambda t: steps[t], rec)
        raw = rec.fallback()
        flag_p = run.flag_p()
        live = lens > 0
        bits.append(raw[live].astype(np.int32))
        probs.append(np.full(int(live.sum()), flag_p, np.int64))
        for b, p in rec.symbols(raw):
          bits.append(b)
          probs.append(p)
        run.count_flags(raw[live])
        run.adapt(lanes, k)
        bar.update(int(lens.sum()))
    encoder = constriction.stream.queue.RangeEncoder()
    if bits:
      encoder.encode(np.concatenate(bits), _BIT, np.concatenate(probs) / cm.ONE)
    words = encoder.get_compressed()
    return _frame(MODEL, self._header(lay, data, mix) + words.astype("<u4").tobytes())

  def _header(self, lay: Layout, data: bytes, mix) -> bytes:
    a = self.adapt
    name, digest = machine()
    name = name.encode()[:255]
    return MODEL_HEADER.pack(
        self.fingerprint, lay.length, zlib.crc32(data), lay.chunk, lay.context, lay.rows,
        dynamic_eval.OPTIMIZERS.index(a.optimizer) + 1 if a.on else 0, dynamic_eval.PARAM_SETS.index(a.params),
        a.steps, a.lr, int(mix is not None), *(mix or cm.MixSettings()).pack(), digest, len(name)) + name

  def byte_probabilities(self, data: bytes) -> np.ndarray:
    """[len(data), 256]: the network's distribution the encoder codes each byte with (after adaptation, if on),
    in file order."""
    data = bytes(data)
    lay = self.layout(len(data))
    lanes = lay.lanes(data, self.pad_id)
    out = np.zeros((lay.rows, lay.n_batches, lay.chunk, 256), np.float32)
    with self._context():
      run = _Run(self, lay, self.adapt, None)
      for k in range(lay.n_batches):
        for t, p in enumerate(run.batch_probs(lanes, k)):
          out[:, k, t] = p
        run.adapt(lanes, k)
    return out.reshape(-1, 256)[:len(data)]

  # --- decoding -------------------------------------------------------------------------------------------

  def decode(self, blob: bytes, progress: bool = False) -> bytes:
    mode, body = _unframe(bytes(blob))
    if mode != MODEL:
      try:
        return CODECS[mode][1](body)
      except Exception as e:  # only reachable past a matching checksum, i.e. a crafted file
        raise UserError(f"compressed {CODEC_NAMES[mode]} payload is malformed ({type(e).__name__}); "
                        "nothing was written") from None
    lay, crc, adapt, mix, words = self._parse(body)
    lanes = lay.lanes(None, self.pad_id)
    decoder = constriction.stream.queue.RangeDecoder(words)
    try:
      with self._context(), _bar("decode", lay.length, progress) as bar:
        run = _Run(self, lay, adapt, mix)
        for k in range(lay.n_batches):
          lens = lay.lens(k)
          live = lens > 0
          raw = np.zeros(lay.rows, bool)
          raw[live] = decoder.decode(_BIT, np.full(int(live.sum()), run.flag_p() / cm.ONE)) == 1
          run.count_flags(raw[live])
          run.code_batch(k, run.stepper(lanes, k), _Reader(decoder, lanes[:, k], lens, raw))
          run.adapt(lanes, k)
          bar.update(int(lens.sum()))
    except (ValueError, RuntimeError, AssertionError) as e:  # only past a matching checksum: a crafted file
      raise UserError(f"compressed stream is malformed ({type(e).__name__}); nothing was written") from None
    out = lanes.reshape(-1)[:lay.length].astype(np.uint8).tobytes()
    if zlib.crc32(out) != crc:
      raise UserError("decoded bytes fail the original's CRC32: this machine's model predictions differ from the "
                      "encoder's (another backend, CPU or JAX/XLA version?); nothing was written")
    return out

  def _parse(self, body: bytes):
    """(layout, crc32, adaptation, mix settings or None, stream words) of a model container's body."""
    if len(body) < MODEL_HEADER.size:
      raise UserError("compressed file is truncated (short header)")
    (fp, length, crc, chunk, context, rows, opt, params, steps, lr, mix_on, *rest) = MODEL_HEADER.unpack_from(body)
    *mix_values, digest, name_len = rest
    end = MODEL_HEADER.size + name_len
    if fp != self.fingerprint:
      raise UserError(f"file was encoded with a different model (fingerprint {fp.hex()}, this checkpoint "
                      f"{self.fingerprint.hex()}); decode it with the checkpoint that encoded it")
    if len(body) < end or (len(body) - end) % WORD.size:
      raise UserError("compressed file has a malformed header or stream length")
    name = body[MODEL_HEADER.size:end].decode(errors="replace")
    self._check_machine(name, digest)
    if not 1 <= rows <= MAX_BATCH or opt > len(dynamic_eval.OPTIMIZERS) or params >= len(dynamic_eval.PARAM_SETS):
      raise UserError(f"compressed header is invalid (rows={rows}, optimizer={opt}, params={params})")
    self._check_layout(chunk, context)
    adapt = dynamic_eval.Adaptation(lr=lr if opt else 0.0, steps=steps,
                                    optimizer=dynamic_eval.OPTIMIZERS[max(opt, 1) - 1],
                                    params=dynamic_eval.PARAM_SETS[params])
    mix = cm.MixSettings.unpack(mix_values) if mix_on else None
    problems = adapt.problems() + (mix.problems() if mix else [])
    if problems:
      raise UserError("compressed header is invalid: " + "; ".join(problems))
    check_deterministic(adapt)
    lay = Layout(length, chunk, context, rows)
    if _ceil_div(lay.n_chunks, rows) != lay.n_batches or (length and rows > lay.n_chunks):
      raise UserError(f"compressed header is invalid (rows={rows} for {lay.n_chunks} chunks)")
    words = np.frombuffer(body, "<u4", offset=end).astype(np.uint32)
    return lay, crc, adapt, mix, words

  def _check_machine(self, name: str, digest: bytes):
    here, here_digest = machine()
    if self.allow_other_machine or (name, digest) == (here, here_digest):
      return
    what = (f"{name!r}, this machine is {here!r}" if name != here else
            f"a {name!r} machine with another CPU model, instruction set, core count or XLA_FLAGS")
    raise UserError(f"file was coded on {what}: the model's float32 predictions must be bit-identical, so decode "
                    "it on the same kind of machine and software (or pass --allow_other_machine to try; the CRC32 "
                    "check still guards the output)")

  # --- shared ---------------------------------------------------------------------------------------------

  def _context(self):
    return self.setup.use()

  def cross_entropy_bits(self, data: bytes, rows_per_call: int = 64) -> float:
    """The network's summed cross-entropy (bits) of `data` with the coder's layout and byte softmax, from a
    teacher-forced pass with the static params: what an ideal coder of the static model would spend."""
    lay = self.layout(len(data))
    if not lay.length:
      return 0.0
    lanes = lay.lanes(bytes(data), self.pad_id)
    parts = [lay.windows(lanes, k, self.pad_id) for k in range(lay.n_batches)]
    inputs, targets, weights = (np.concatenate(x) for x in zip(*parts))
    total = 0.0
    with self._context():
      for i in range(0, len(inputs), rows_per_call):
        part = [np.resize(x[i:i + rows_per_call], (rows_per_call, lay.window)) for x in (inputs, targets, weights)]
        part[2][len(inputs) - i:] = 0  # np.resize repeats rows to fill the last call: weigh those zero
        total += float(_window_nll(self.model, self.params, *map(jnp.asarray, part)))
    return total / np.log(2)


class _Run:
  """The state one encode or decode carries from batch to batch: params (adapted), predictor, flag counts."""

  def __init__(self, coder: Coder, lay: Layout, adapt, mix):
    self.coder, self.lay, self.model = coder, lay, coder.model
    self.params = coder.params
    self.updater = dynamic_eval.Updater(coder.model, adapt) if adapt.on else None
    self.opt_state = self.updater.init(self.params) if self.updater else None
    length = lay.length
    self.predictor = cm.ContextMixer(mix, lay.rows, length) if mix else cm.NetworkOnly(lay.rows, length)
    self.flags = [0, 0]  # chunks coded by the model, fallen back

  def _cache(self):
    return model_lib.init_cache(self.model.cfg, self.lay.rows, self.lay.window)

  def batch_probs(self, lanes, k: int) -> list:
    """[steps] of [rows, 256]: the distribution each byte t of batch k is coded with, from the same calls the
    decoder makes. Every input is known up front, so all calls are dispatched before any result is read."""
    probs, cache = _feed(self.model, self.params, self._cache(), jnp.asarray(self.lay.prefix(lanes, k)))
    outs = [probs]
    for t in range(int(self.lay.lens(k).max()) - 1):
      probs, cache = _feed(self.model, self.params, cache, jnp.asarray(lanes[:, k, t:t + 1]))
      outs.append(probs)
    return [np.asarray(p) for p in outs]

  def stepper(self, lanes, k: int):
    """The decoder's model calls: step t's distribution, after bytes 0..t-1 of batch k are decoded."""
    state = {}

    def step(t):
      if t == 0:
        state["probs"], state["cache"] = _feed(self.model, self.params, self._cache(),
                                               jnp.asarray(self.lay.prefix(lanes, k)))
      else:
        state["probs"], state["cache"] = _feed(self.model, self.params, state["cache"],
                                               jnp.asarray(lanes[:, k, t - 1:t]))
      return np.asarray(state["probs"])

    return step

  def code_batch(self, k: int, probs_at, bits):
    """Every byte of batch k, bit by bit: the predictor's probability, then the coded bit (`bits` encodes the
    known bit or decodes it), then the predictor learns it. One code path for both directions."""
    lens = self.lay.lens(k)
    for t in range(int(lens.max())):
      live = lens > t
      positions = self.lay.positions(k, t)
      self.predictor.start(probs_at(t), positions, live)
      c0 = np.ones(self.lay.rows, np.int64)
      for j in range(8):
        p = self.predictor.p(c0, j)
        bit = bits(t, j, p, live)
        self.predictor.update(bit, live)
        c0 = 2 * c0 + bit
      self.predictor.end(c0 - 256, positions, live)

  def flag_p(self) -> int:
    """16-bit P(a chunk falls back), from the counts so far (Krichevsky-Trofimov)."""
    model, raw = self.flags
    return int(np.clip(((2 * raw + 1) << 16) // (2 * (model + raw) + 2), 1, cm.ONE - 1))

  def count_flags(self, raw):
    self.flags[0] += int((~raw).sum())
    self.flags[1] += int(raw.sum())

  def adapt(self, lanes, k: int):
    if self.updater is None or k == self.lay.n_batches - 1:
      return
    inputs, targets, weights = self.lay.windows(lanes, k, self.coder.pad_id)
    self.params, self.opt_state = self.updater.update(self.params, self.opt_state, jnp.asarray(inputs),
                                                      jnp.asarray(targets), jnp.asarray(weights))


class _Recorder:
  """The encoder's side of `code_batch`: returns the known bits and keeps their probabilities."""

  def __init__(self, grid, lens):
    self.grid, self.lens = grid, lens
    self.steps = []

  def __call__(self, t, j, p, live):
    bit = (np.where(live, self.grid[:, t], 0) >> (7 - j)) & 1
    self.steps.append((bit.astype(np.int64), p, live))
    return bit.astype(np.int64)

  def fallback(self):
    """[rows] whether a chunk costs less at 8 bits per byte than under the model."""
    cost = np.zeros(len(self.lens))
    for bit, p, live in self.steps:
      q = np.where(bit == 1, p, cm.ONE - p) / cm.ONE
      cost += np.where(live, -np.log2(q), 0.0)
    return cost > 8 * self.lens

  def symbols(self, raw):
    for bit, p, live in self.steps:
      yield bit[live].astype(np.int32), np.where(raw, HALF, p)[live]


class _Reader:
  """The decoder's side of `code_batch`: decodes each bit and writes finished bytes into the lanes."""

  def __init__(self, decoder, grid, lens, raw):
    self.decoder, self.grid, self.lens, self.raw = decoder, grid, lens, raw
    self.byte = np.zeros(len(lens), np.int64)

  def __call__(self, t, j, p, live):
    bit = np.zeros(len(self.lens), np.int64)
    bit[live] = self.decoder.decode(_BIT, np.where(self.raw, HALF, p)[live] / cm.ONE)
    self.byte = np.where(j == 0, 0, self.byte) * 2 + bit
    if j == 7:
      self.grid[live, t] = self.byte[live]
    return bit


def codec_containers(data: bytes) -> list:
  """`data` stored and compressed by each fallback codec, framed: the candidates besides the model's."""
  return [_frame(mode, compress(data)) for mode, (compress, _) in CODECS.items()]


def _frame(mode: int, body: bytes) -> bytes:
  out = FRAME.pack(MAGIC, VERSION, mode) + body
  return out + WORD.pack(zlib.crc32(out))


def _unframe(blob: bytes):
  """(mode, body) of a container, after checking it end to end."""
  if len(blob) < len(MAGIC) or blob[:len(MAGIC)] != MAGIC:
    raise UserError("not an lm.compress file (bad magic bytes)")
  if len(blob) < FRAME.size + WORD.size or WORD.unpack(blob[-WORD.size:])[0] != zlib.crc32(blob[:-WORD.size]):
    raise UserError("compressed file is truncated or corrupt (checksum mismatch); nothing was written")
  _, version, mode = FRAME.unpack_from(blob)
  if version != VERSION:
    raise UserError(f"compressed file has format version {version}; this lm reads version {VERSION}")
  if mode not in CODEC_NAMES:
    raise UserError(f"compressed file has unknown mode {mode}")
  return mode, blob[FRAME.size:-WORD.size]


def mode_of(blob: bytes) -> str:
  """How a container was coded: 'model', 'stored', 'zstd -19', 'bzip2 -9' or 'xz -9e'."""
  return CODEC_NAMES[_unframe(blob)[0]]


def _bar(desc: str, total: int, progress: bool):
  # None: tqdm shows the bar on a terminal only
  return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None if progress else True, leave=False)


def _table_bits(length: int) -> int:
  """Context-table size for a file: 128 slots per byte (a byte touches 8 per context), so that few contexts
  collide (measured on Python's LICENSE: 2^18 slots 3,628 bytes, 2^20 3,602, 2^22 3,591), and small files do
  not allocate and clear the full tables."""
  return max(12, int(np.ceil(np.log2(128 * length + 1))))


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)
