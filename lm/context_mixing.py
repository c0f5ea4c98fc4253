"""Bitwise prediction of bytes for the range coder: the network's byte distribution alone, or mixed (PAQ style)
with adaptive context models learned from the file itself.

Each byte is coded as 8 binary decisions, most significant bit first. After j bits the partial byte is
c0 = 1 b7 .. b(8-j) (1..255), and a predictor gives P(next bit = 1) as a 16-bit integer (1..65535).

- `NetworkBits`: the network's conditional P(bit | c0), summed from its byte distribution.
- `ContextMixer` (lpaq1, Mahoney 2007, simplified): order-k contexts (hashed last k bytes), a word context and a
  match model each predict the bit from what followed the same context earlier in the file; a gated linear
  network over stretch(p) = ln(p / (1 - p)) (logistic mixing) combines them with the network's prediction, and
  learns its weights online from each coded bit. Text unlike the network's training data still compresses: the
  context models learn the file's words and repeats as they are coded.

Determinism: the decoder must reproduce every probability exactly. Everything here is integer arithmetic
(NumPy int64/uint64, wrapping multiplication for hashes) on identical inputs in an identical order, and
stretch/squash are integer tables computed in correctly rounded decimal arithmetic, so no float rounding or
libm difference between machines can enter. The only float input is the network's float32 distribution, turned
into integers by an exact scaling (x * 2^24, floor). Lanes (rows) code in lockstep and share every table;
when two rows update the same slot in one step the updates are summed with `np.add.at` (order-free integer
sums), and a slot two rows write is kept from the last row, so no result depends on NumPy's scatter order.
"""
import dataclasses
import decimal
import functools

import numpy as np

ONE = 1 << 16  # probabilities are 16-bit integers: p / ONE
NET_SCALE = 1 << 24  # the network's byte probabilities as integers: floor(p * 2^24) + 1 > 0
LOGIT_MAX = 2047  # logits in 1/256 units, clipped to +-8


@functools.cache
def tables():
  """(squash, stretch) as integer tables: squash[x + 2047] = 65536 / (1 + e^(-x / 256)) for logits x in
  -2047..2047, computed in decimal arithmetic, which rounds correctly on every machine (a float exp may differ
  in the last bit between C libraries); stretch[p] = the smallest x with squash(x) >= p, its exact inverse."""
  c = decimal.Context(prec=20, rounding=decimal.ROUND_HALF_EVEN)  # explicit: not the thread's context
  squash = np.array([int(c.divide(ONE, c.add(1, c.exp(c.divide(-x, 256)))).to_integral_value(context=c))
                     for x in range(-LOGIT_MAX, LOGIT_MAX + 1)], np.int64)
  stretch = np.searchsorted(squash, np.arange(ONE), side="left") - LOGIT_MAX
  return np.clip(squash, 1, ONE - 1), np.clip(stretch, -LOGIT_MAX, LOGIT_MAX)


def _clamp(x, lo: int, hi: int):
  return np.minimum(np.maximum(x, lo), hi)  # np.clip's per-call overhead is a fifth of the mixer's time


def squash(x):
  """16-bit probability of integer logits x (1/256 units)."""
  return tables()[0][_clamp(x, -LOGIT_MAX, LOGIT_MAX) + LOGIT_MAX]


def stretch(p):
  """Integer logit (1/256 units) of 16-bit probabilities p."""
  return tables()[1][p]


RATE = (2 * ONE) // (2 * np.arange(1024, dtype=np.int64) + 3)  # 1 / (n + 1.5): adaptation after n updates


@dataclasses.dataclass(frozen=True)
class MixSettings:
  """What the context mixer uses; stored in the compressed file's header (see `pack`)."""
  orders: tuple = (1, 2, 3, 4, 6)  # byte contexts (1..8)
  word: bool = True  # a context of the current word's letters
  match_min: int = 6  # shortest repeat the match model follows (0: no match model)
  table_bits: int = 22  # 2^bits slots per context table
  lr: int = 6  # mixer learning rate (weights move by lr * err * input / 2^18, err and weights 16-bit)
  limit: int = 255  # a slot's adaptation rate stops falling after this many updates (1 / (limit + 1.5))

  FORMAT = "<BBBBBH"

  def pack(self) -> tuple:
    mask = sum(1 << (k - 1) for k in self.orders) | (0x100 if self.word else 0)
    return (mask & 0xFF, mask >> 8, self.match_min, self.table_bits, self.lr, self.limit)

  @classmethod
  def unpack(cls, values) -> "MixSettings":
    lo, hi, match_min, table_bits, lr, limit = values
    mask = lo | hi << 8
    return cls(orders=tuple(k for k in range(1, 9) if mask >> (k - 1) & 1), word=bool(mask & 0x100),
               match_min=match_min, table_bits=table_bits, lr=lr, limit=limit)

  def problems(self) -> list:
    out = []
    if any(not 1 <= k <= 8 for k in self.orders):
      out.append(f"mix orders must be in 1..8, got {self.orders}")
    if not 0 <= self.match_min <= 8:
      out.append(f"mix match_min={self.match_min} must be in 0..8 (0: no match model)")
    if not 10 <= self.table_bits <= 26:
      out.append(f"mix table_bits={self.table_bits} must be in 10..26")
    if not 1 <= self.lr <= 255 or not 1 <= self.limit <= 1023:
      out.append(f"mix lr={self.lr} must be in 1..255 and limit={self.limit} in 1..1023")
    return out


class NetworkBits:
  """P(bit = 1 | c0) of each row from the network's byte distribution [rows, 256] (float32)."""

  def __init__(self, rows: int):
    self.rows = np.arange(rows)

  def start(self, probs):
    q = np.floor(np.asarray(probs, np.float32) * np.float32(NET_SCALE)).astype(np.int64) + 1
    self.cum = np.concatenate([np.zeros((len(q), 1), np.int64), np.cumsum(q, axis=1)], axis=1)

  def p(self, c0, j: int):
    """[rows] 16-bit P(bit j = 1) given the partial bytes c0 (bit j of 0..7, most significant first)."""
    lo = (c0 - (1 << j)) << (8 - j)
    mid, hi = lo + (128 >> j), lo + (256 >> j)
    total = self.cum[self.rows, hi] - self.cum[self.rows, lo]
    ones = self.cum[self.rows, hi] - self.cum[self.rows, mid]
    return _clamp((ones << 16) // total, 1, ONE - 1)


class NetworkOnly:
  """The predictor without mixing: the network's bit probabilities, unchanged."""

  def __init__(self, rows: int, length: int):
    del length
    self.net = NetworkBits(rows)

  def start(self, probs, positions, live):
    del positions, live
    self.net.start(probs)

  def p(self, c0, j):
    return self.net.p(c0, j)

  def update(self, bit, live):
    pass

  def end(self, byte, positions, live):
    pass


def _hash(x, salt: int):
  """uint64 multiplicative hash (wrapping arithmetic; identical on every machine)."""
  x = (np.asarray(x, np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
  return x ^ (x >> np.uint64(29))


class _Slots:
  """A table of adaptive bit probabilities (16-bit) with update counts, addressed by hashed contexts."""

  def __init__(self, size: int, limit: int):
    # int32/int16: with at most 4096 rows (compression.MAX_BATCH) a slot's summed updates cannot overflow
    self.p = np.full(size, ONE // 2, np.int32)
    self.n = np.zeros(size, np.int16)
    self.limit = limit

  def update(self, idx, bit, live):
    idx, bit = idx[live], bit[live]
    delta = (((bit << 16) - self.p[idx]) * RATE[self.n[idx]]) >> 16
    np.add.at(self.p, idx, delta.astype(np.int32))
    np.add.at(self.n, idx, np.int16(1))
    # Rows that shared a slot summed their steps: clamp (every duplicate writes the same value)
    self.p[idx] = _clamp(self.p[idx], 1, ONE - 1)
    self.n[idx] = np.minimum(self.n[idx], self.limit)


def _assign_last(table, idx, values):
  """table[idx] = values, the last row winning where rows share an index (NumPy leaves that order open)."""
  _, first_reversed = np.unique(idx[::-1], return_index=True)
  keep = len(idx) - 1 - first_reversed
  table[idx[keep]] = values[keep]


class _Mixer:
  """A gated linear network in the logit domain: weights [sets, inputs] (16-bit fixed point), one set per row
  picked by a small context, trained online on each bit's coding cost."""

  def __init__(self, sets: int, w0, lr: int):
    self.weights = np.tile(w0, (sets, 1))
    self.lr = lr

  def logit(self, inputs, select):
    self.inputs, self.select = inputs, select
    x = (inputs * self.weights[select]).sum(axis=1) >> 16
    self.pr = squash(x)
    return _clamp(x, -LOGIT_MAX, LOGIT_MAX)

  def update(self, bit, live):
    err = ((bit << 16) - self.pr) * self.lr
    rows = np.flatnonzero(live)
    delta = (self.inputs[rows] * err[rows, None]) >> 18
    np.add.at(self.weights, (self.select[rows, None], np.arange(self.weights.shape[1])[None]), delta)


class _APM:
  """Secondary estimation (lpaq1's APM): refines a probability in a context by interpolating between 33 learned
  points of its logit, and learns the point nearer to it."""

  def __init__(self, contexts: int, rate: int = 7):
    self.t = np.tile(squash((np.arange(33) - 16) * 128), contexts)
    self.rate = rate

  def p(self, pr, context):
    x = stretch(pr) + 2048  # 1..4095
    lo, w = x >> 7, x & 127
    at = context * 33 + lo
    self.idx = at + (w >> 6)
    return (self.t[at] * (128 - w) + self.t[at + 1] * w) >> 7

  def update(self, bit, live):
    idx = self.idx[live]
    np.add.at(self.t, idx, ((bit[live] << 16) - self.t[idx]) >> self.rate)
    self.t[idx] = _clamp(self.t[idx], 1, ONE - 1)


class ContextMixer:
  """The network mixed with order-k, word and match models of the file coded so far (module docstring).

  Per step, every row codes the byte at its file position: `start` (the network's distribution), then for each
  bit `p` and `update`, then `end` (the byte, for the histories and the match model)."""

  MATCH_VERIFY = 32  # bytes compared backwards when the match model takes a candidate

  def __init__(self, settings: MixSettings, rows: int, length: int):
    s = self.s = settings
    self.net = NetworkBits(rows)
    self.rows = np.arange(rows)
    self.mask = np.uint64((1 << s.table_bits) - 1)
    self.shift = np.uint64(64 - s.table_bits)
    self.n_ctx = len(s.orders) + int(s.word)
    self.slots = [_Slots(1 << s.table_bits, s.limit) for _ in range(self.n_ctx)]
    self.hist = np.zeros(rows, np.uint64)  # each lane's last 8 bytes (0 before its start)
    self.seen = np.zeros(rows, np.int64)  # bytes coded in the lane so far
    self.word = np.zeros(rows, np.uint64)
    # inputs: network, contexts, match, bias. Two mixers: one weight set per partial byte c0, and one per
    # (confidence of the network, bit position); then two APMs, by c0 and by c0 and the previous byte.
    self.n_in = 1 + self.n_ctx + int(bool(s.match_min)) + 1
    w0 = np.full(self.n_in, ONE // 4, np.int64)
    w0[0] = ONE
    self.mixers = [_Mixer(256, w0, s.lr), _Mixer(8 * 8, w0, s.lr)]
    self.apms = [_APM(256), _APM(1 << 16)]
    if s.match_min:
      self.buf = np.zeros(max(length, 1), np.int64)
      self.known = np.zeros(max(length, 1), bool)
      self.last = np.zeros(1 << min(s.table_bits, 22), np.int64)  # hash of match_min bytes -> position + 1
      self.match_ptr = np.zeros(rows, np.int64)
      self.match_len = np.zeros(rows, np.int64)
      self.match_slots = _Slots(64 * 2, s.limit)
    self._contexts()

  def _contexts(self):
    """Per-row hashes of each context for the next byte (order k: the lane's last k bytes, salted by k)."""
    s = self.s
    hashes = []
    for k in s.orders:
      h = _hash(self.hist & np.uint64((1 << (8 * k)) - 1), k)
      hashes.append(np.where(self.seen >= k, h, _hash(self.seen, 100 + k)))  # fewer bytes: own context
    if s.word:
      hashes.append(_hash(self.word, 99))
    self.ctx = np.stack(hashes) if hashes else np.zeros((0, len(self.rows)), np.uint64)

  def start(self, probs, positions, live):
    del positions, live
    self.net.start(probs)
    self.expected = self._match_byte() if self.s.match_min else None

  def _match_byte(self):
    """[rows] the byte the match model predicts (-1: none)."""
    ok = self.match_len > 0
    return np.where(ok, self.buf[np.where(ok, self.match_ptr, 0)], -1)

  def p(self, c0, j):
    s = self.s
    inputs = np.zeros((len(self.rows), self.n_in), np.int64)
    inputs[:, 0] = stretch(self.net.p(c0, j))
    salt = _hash(c0, 7)
    self.idx = (((self.ctx ^ salt[None]) * np.uint64(0xD6E8FEB86659FD93)) >> self.shift).astype(np.int64)
    for i, slots in enumerate(self.slots):
      inputs[:, 1 + i] = np.where(slots.n[self.idx[i]] > 0, stretch(slots.p[self.idx[i]]), 0)
    if s.match_min:
      follows = (self.expected >= 0) & (((self.expected + 256) >> (8 - j)) == c0)
      self.match_bit = (self.expected >> (7 - j)) & 1
      self.match_idx = np.where(follows, np.minimum(self.match_len, 31) * 2 + self.match_bit, -1)
      p = self.match_slots.p[np.maximum(self.match_idx, 0)]
      inputs[:, 1 + self.n_ctx] = np.where(follows, stretch(p), 0)
    inputs[:, -1] = 256
    confidence = np.minimum(np.abs(inputs[:, 0]) >> 8, 7)
    x = (self.mixers[0].logit(inputs, c0) + self.mixers[1].logit(inputs, confidence * 8 + j)) >> 1
    pr = squash(x)
    previous = (self.hist & np.uint64(255)).astype(np.int64)
    refined = self.apms[0].p(pr, c0) + self.apms[1].p(pr, c0 | previous << 8)
    return _clamp((2 * pr + refined + 2) >> 2, 1, ONE - 1)

  def update(self, bit, live):
    bit = bit.astype(np.int64)
    for m in (*self.mixers, *self.apms):
      m.update(bit, live)
    for i, slots in enumerate(self.slots):
      slots.update(self.idx[i], bit, live)
    if self.s.match_min:
      self.match_slots.update(np.maximum(self.match_idx, 0), bit, live & (self.match_idx >= 0))

  def end(self, byte, positions, live):
    byte = np.asarray(byte, np.int64)
    b = byte.astype(np.uint64)
    self.hist = np.where(live, (self.hist << np.uint64(8)) | b, self.hist)
    self.seen = np.where(live, self.seen + 1, self.seen)
    letter = ((byte | 32) >= ord("a")) & ((byte | 32) <= ord("z"))
    new_word = np.where(letter, (self.word + (b | np.uint64(32))) * np.uint64(0x2F0B3C4D5E6F7A1B), np.uint64(0))
    self.word = np.where(live, new_word, self.word)
    if self.s.match_min:
      self._end_match(byte, positions, live)
    self._contexts()

  def _end_match(self, byte, positions, live):
    rows = np.flatnonzero(live)
    pos = positions[rows]
    self.buf[pos] = byte[rows]
    self.known[pos] = True
    # a match continues while its predicted byte comes true
    ptr, length = self.match_ptr[rows], self.match_len[rows]
    hit = (length > 0) & (self.buf[ptr] == byte[rows])
    ptr, length = np.where(hit, ptr + 1, 0), np.where(hit, length + 1, 0)
    # rows without a match look up the last time their last match_min bytes occurred
    n = self.s.match_min
    enough = self.seen[rows] >= n
    h = (_hash(self.hist[rows] & np.uint64((1 << (8 * n)) - 1), 200) >> np.uint64(64 - 22)).astype(np.int64)
    h &= len(self.last) - 1
    cand = self.last[h] - 1
    look = (length == 0) & enough & (cand >= 0)
    back = np.arange(1, self.MATCH_VERIFY + 1)
    a, b = cand[:, None] - back, (pos + 1)[:, None] - back
    valid = (a >= 0) & (b >= 0)
    a, b = np.maximum(a, 0), np.maximum(b, 0)
    same = valid & self.known[a] & self.known[b] & (self.buf[a] == self.buf[b])
    run = np.cumprod(same, axis=1).sum(axis=1)
    take = look & (run >= n)
    ptr, length = np.where(take, cand, ptr), np.where(take, run, length)
    # a prediction needs its byte coded already (another lane may not have reached it yet)
    ok = (length > 0) & (ptr < len(self.known))
    ok &= self.known[np.where(ok, ptr, 0)]
    self.match_ptr[rows], self.match_len[rows] = np.where(ok, ptr, 0), np.where(ok, length, 0)
    if enough.any():
      _assign_last(self.last, h[enough], pos[enough] + 2)  # the next byte's position, + 1
