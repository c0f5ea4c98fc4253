"""Model-driven compression: exact round trips in every mode, the stored-fallback bound, adaptation that
reproduces across processes, size against the model's cross-entropy, corruption caught.

A tiny random model with 16-byte chunks (8 bytes of context) and at most 4 lanes, so inputs of a few hundred
bytes already span several chunks, lanes and batches (adaptation blocks).
"""
import functools
import json
import os
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from lm import checkpoint as ckpt_lib
from lm import compress
from lm import compression
from lm import context_mixing as cm
from lm import dynamic_eval
from lm.errors import UserError
from lm.setup import Setup
from tests.conftest import ROOT, tiny_config

CHUNK, CONTEXT, BATCH = 16, 8, 4
ADAPT = dynamic_eval.Adaptation(lr=3e-3)
MIX = cm.MixSettings(table_bits=16)
MODES = {"static": {}, "adaptive": {"adapt": ADAPT}, "mixing": {"mix": MIX},
         "adaptive_mixing": {"adapt": ADAPT, "mix": MIX}}
TEXT = (b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        b"First Citizen:\nYou are all resolved rather to die than to famish?\n")
CASES = {
    "empty": b"",
    "one_byte": b"\x00",
    "all_byte_values": bytes(range(256)),
    "random_binary": np.random.default_rng(0).bytes(300),
    "non_utf8_text": "naïve café, ½ € — déjà vu".encode("cp1252") + b"\xc3\x28\xa0\xa1\xff\xfe",
    "text_longer_than_a_chunk": TEXT,
}


def bound(n: int) -> int:
  """The most any input of n bytes may grow: 64 bytes + 0.1%."""
  return n + 64 + n // 1000


@pytest.fixture(scope="module")
def setup():
  return Setup(tiny_config())


@pytest.fixture(scope="module")
def params(setup):
  return setup.init_params(jax.random.PRNGKey(0))


def make(setup, params, **kw):
  return compression.Coder(setup, params, chunk_size=CHUNK, context=CONTEXT, batch_size=BATCH, **kw)


@pytest.fixture(scope="module")
def coders(setup, params):
  return {name: make(setup, params, **kw) for name, kw in MODES.items()}


@pytest.fixture(scope="module")
def coder(coders):
  return coders["static"]


def scaled(coder, factor, **kw):
  """The same model with its (tied) embeddings scaled: sharper predictions, down to probabilities ~0."""
  params = dict(coder.params)
  params["embed"] = {"embedding": coder.params["embed"]["embedding"] * factor}
  return make(coder.setup, params, **kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_model_coding_round_trips_in_every_mode(coders, mode, name):
  data = CASES[name]
  blob = coders[mode].encode(data, fallback=False)
  assert compression.mode_of(blob) == "model"
  assert coders[mode].decode(blob) == data


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=4, deadline=None)
@given(data=st.one_of(st.binary(max_size=80), st.text(max_size=40).map(str.encode)))
def test_property_round_trip_in_every_mode(coders, mode, data):
  coder = coders[mode]
  assert coder.decode(coder.encode(data, fallback=False)) == data
  assert coder.decode(coder.encode(data)) == data


@settings(max_examples=10, deadline=None)
@given(data=st.one_of(st.binary(max_size=600), st.text(max_size=200).map(str.encode),
                      st.integers(0, 1200).map(lambda n: np.random.default_rng(n).bytes(n)),
                      st.sampled_from([TEXT * 4, bytes(range(256)) * 3, b"\x00" * 700])))
def test_property_no_input_grows_more_than_the_bound(coders, data):
  coder = coders["adaptive_mixing"]
  blob = coder.encode(data)
  assert len(blob) <= bound(len(data)), (len(blob), len(data))
  assert len(blob) <= len(data) + compression.FRAME.size + compression.WORD.size  # stored is always a candidate
  assert coder.decode(blob) == data


def test_chunks_the_model_loses_on_fall_back_to_8_bits_per_byte(coders):
  """Per chunk: random bytes cost the model more than 8 bits each, so its container stores them at 8 bits
  (plus a few bits of flags and the coder's flush), while the text beside them stays model-coded."""
  coder = coders["adaptive_mixing"]
  noise = np.random.default_rng(1).bytes(320)
  blob = coder.encode(noise, fallback=False)
  header = len(coder.encode(b"", fallback=False))
  assert len(blob) <= len(noise) + header + 8, (len(blob), len(noise), header)
  mixed = TEXT * 3 + noise
  text_only = len(coder.encode(TEXT * 3, fallback=False))
  # the lanes and adaptation blocks shift, and one chunk straddles text and noise
  assert len(coder.encode(mixed, fallback=False)) <= 1.1 * text_only + len(noise) + 8
  assert coder.decode(coder.encode(mixed, fallback=False)) == mixed


def test_the_fallback_codecs_round_trip_and_each_can_win(coder):
  runs = b"ab" * 3000
  blob = coder.encode(runs)
  assert compression.mode_of(blob) in ("zstd -19", "bzip2 -9", "xz -9e") and len(blob) < 100
  assert coder.decode(blob) == runs
  for mode, (comp, _) in compression.CODECS.items():
    framed = compression._frame(mode, comp(TEXT))
    assert coder.decode(framed) == TEXT


def test_bytes_the_model_rules_out_still_round_trip(coder):
  peaked = scaled(coder, 200.0)
  data = CASES["random_binary"]
  with peaked._context():
    cache = compression.model_lib.init_cache(peaked.model.cfg, 1, CHUNK)
    probs, _ = compression._feed(peaked.model, peaked.params, cache, np.array([[compression.START]], np.int32))
  assert float(np.min(probs)) < 1e-30  # far below the coder's smallest probability, 2^-16 per bit
  assert peaked.decode(peaked.encode(data, fallback=False)) == data


def test_chunks_open_with_the_bytes_before_them(coder):
  # 4 lanes of 2 chunks: the second chunk of each lane opens with its lane's previous CONTEXT bytes.
  lay = compression.Layout(128, CHUNK, CONTEXT, 4)
  lanes = lay.lanes(bytes(range(128)))
  assert lanes.shape == (4, 2, CHUNK)
  np.testing.assert_array_equal(lay.prefix(lanes, 0), [[compression.START]] * 4)
  np.testing.assert_array_equal(lay.prefix(lanes, 1)[:, -1], [15, 47, 79, 111])
  np.testing.assert_array_equal(lay.prefix(lanes, 1)[1], np.arange(40, 48))  # lane 1 holds bytes 32..63


@pytest.mark.parametrize("factor", [1.0, 8.0])
def test_coded_size_matches_the_coded_distributions(coder, factor):
  """The container is the ideal cost of its bytes under the coded distributions, chunk by chunk capped at 8 bits
  per byte (the fallback), within 0.5% and the coder's flush; and cross_entropy_bits (a teacher-forced pass)
  agrees with those distributions."""
  model = scaled(coder, factor)
  data = (TEXT * 8)[:1000]
  blob = model.encode(data, fallback=False)
  probs = model.byte_probabilities(data)
  bits = -np.log2(probs[np.arange(len(data)), np.frombuffer(data, np.uint8)])
  chunks = [bits[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
  ideal = sum(min(c.sum(), 8 * len(c)) for c in chunks) / 8
  framing = len(model.encode(b"", fallback=False))
  assert ideal * 0.995 <= len(blob) - framing <= ideal * 1.005 + 8, (len(blob), framing, ideal)
  assert model.cross_entropy_bits(data) == pytest.approx(bits.sum(), rel=1e-4)
  assert model.decode(blob) == data
  if factor > 1:
    assert 0 < sum(c.sum() > 8 * len(c) for c in chunks) < len(chunks)  # both kinds of chunk occur


@functools.partial(jax.jit, static_argnums=0)  # eager op-by-op passes took most of these tests' time
def _logits(module, params, inputs):
  return module.apply({"params": params}, inputs)[0]


def teacher_forced(model, params, lay, lanes, k):
  """[rows, chunk, 256] float64: the softmax of a full forward pass over batch k's windows."""
  inputs, _, _ = lay.windows(lanes, k, model.pad_id)
  with model._context():
    logits = _logits(model.model, params, inputs)
  p = lay.prefix(lanes, k).shape[1]
  return np.asarray(jax.nn.softmax(np.asarray(logits[:, p - 1:p - 1 + lay.chunk, :256], np.float64)))


def test_coded_distributions_equal_a_teacher_forced_softmax(coder):
  """Each byte is coded under p(byte | the bytes before it in its chunk, the chunk's context): checked against
  the model's full forward pass over each window, with a model whose prediction depends on the previous byte."""
  model = scaled(coder, 8.0)  # tied embeddings x 8: sharp predictions that follow the input byte
  data = (TEXT * 3)[:200]
  got = model.byte_probabilities(data)
  lay = model.layout(len(data))
  lanes = lay.lanes(data, model.pad_id)
  want = np.stack([teacher_forced(model, model.params, lay, lanes, k) for k in range(lay.n_batches)], axis=1)
  want = want.reshape(-1, 256)[:len(data)]
  np.testing.assert_allclose(got, want, atol=1e-4)
  # the previous byte matters to this model: a stale context would give other distributions
  assert np.abs(want[1:] - want[:-1]).max() > 0.1


def test_adaptive_coding_uses_the_model_after_an_adam_step_on_each_earlier_batch(coder):
  """With adaptation on, batch k is coded under the params after k Adam steps, each on the batch before it:
  checked against a teacher-forced pass under params from an independent loss and optax's Adam."""
  adapt = dynamic_eval.Adaptation(lr=1e-2)
  model = scaled(coder, 8.0, adapt=adapt)
  data = (TEXT * 3)[:300]
  got = model.byte_probabilities(data)
  lay = model.layout(len(data))
  lanes = lay.lanes(data, model.pad_id)
  assert lay.n_batches >= 3
  opt = optax.adam(adapt.lr, b1=dynamic_eval.B1, b2=dynamic_eval.B2)

  @jax.jit
  @jax.grad
  def grad(p, inputs, targets, weights):
    logp = jax.nn.log_softmax(_logits(model.model, p, inputs)[..., :256])
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return (nll * weights).sum() / weights.sum()

  params, state, want = model.params, None, []
  with model._context():
    state = opt.init(params)
    for k in range(lay.n_batches):
      want.append(teacher_forced(model, params, lay, lanes, k))
      updates, state = opt.update(grad(params, *lay.windows(lanes, k, model.pad_id)), state, params)
      params = optax.apply_updates(params, updates)
  want = np.stack(want, axis=1).reshape(-1, 256)[:len(data)]
  np.testing.assert_allclose(got, want, atol=2e-4)
  static = scaled(coder, 8.0).byte_probabilities(data)
  first = (lay.positions(0, 0)[:, None] + np.arange(CHUNK)).reshape(-1)  # batch 0: coded before any update
  np.testing.assert_array_equal(got[first], static[first])
  assert np.abs(got - static).max() > 0.05  # the updates changed later predictions


def test_learning_while_coding_and_mixing_shrink_a_repetitive_file(coders):
  data = TEXT * 6
  sizes = {m: len(c.encode(data, fallback=False)) for m, c in coders.items()}
  assert sizes["adaptive"] < 0.97 * sizes["static"], sizes
  assert sizes["mixing"] < 0.6 * sizes["static"], sizes  # the match and order-k models learn the repeats
  assert sizes["adaptive_mixing"] < 0.6 * sizes["static"], sizes


ENCODE_SCRIPT = """
import sys
from lm import compression, dynamic_eval
coder = compression.Coder.from_run(sys.argv[1], chunk_size={chunk}, context={context}, batch_size={batch},
                                   adapt=dynamic_eval.Adaptation(lr={lr}), mix=compression.DEFAULT_MIX)
data = open(sys.argv[2], "rb").read()
open(sys.argv[3], "wb").write(coder.encode(data, fallback=False))
"""


def test_encode_in_one_process_decode_in_another_with_adaptation_on(run_dir, tmp_path, coders):
  """A fresh process (its own compilation, allocations and thread pool) encodes with adaptation and mixing on;
  this process gives the same bytes and decodes them."""
  src, packed = tmp_path / "in.bin", tmp_path / "in.lmac"
  data = TEXT * 3 + CASES["random_binary"]
  src.write_bytes(data)
  script = ENCODE_SCRIPT.format(chunk=CHUNK, context=CONTEXT, batch=BATCH, lr=ADAPT.lr)
  r = subprocess.run([sys.executable, "-c", script, str(run_dir), str(src), str(packed)],
                     env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  blob = packed.read_bytes()
  coder = make(coders["static"].setup, coders["static"].params, adapt=ADAPT, mix=compression.DEFAULT_MIX)
  assert coder.encode(data, fallback=False) == blob
  assert coder.decode(blob) == data


def test_another_model_is_rejected(coder):
  blob = coder.encode(TEXT, fallback=False)
  with pytest.raises(UserError, match="different model"):
    scaled(coder, 1.001).decode(blob)


def with_machine(blob: bytes, name: bytes) -> bytes:
  """The container re-framed as if coded on a machine called `name`."""
  mode, body = compression._unframe(blob)
  size = compression.MODEL_HEADER.size
  old_len = body[size - 1]
  body = body[:size - 1] + bytes([len(name)]) + name + body[size + old_len:]
  return compression._frame(mode, body)


def test_another_machine_is_refused_in_one_line(coders):
  coder = coders["adaptive_mixing"]
  blob = coder.encode(TEXT, fallback=False)
  name, _ = compression.machine()
  assert name.encode() in blob  # recorded readably: backend, device kind, jax and jaxlib versions
  with pytest.raises(UserError, match="'gpu NVIDIA H200 jax 9.9.9 jaxlib 9.9.9'") as e:
    coder.decode(with_machine(blob, b"gpu NVIDIA H200 jax 9.9.9 jaxlib 9.9.9"))
  assert "\n" not in str(e.value) and "decode it on the same kind of machine" in str(e.value)
  lenient = make(coder.setup, coder.params)
  lenient.allow_other_machine = True
  assert lenient.decode(with_machine(blob, b"cpu other")) == TEXT


def test_adaptive_coding_is_refused_on_a_gpu_without_deterministic_ops(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(UserError, match="xla_gpu_deterministic_ops"):
    compression.check_deterministic(ADAPT)
  compression.check_deterministic(dynamic_eval.Adaptation())  # static coding: the CRC32 guards it


@pytest.mark.parametrize("mode", MODES)
def test_truncation_is_detected_in_every_mode(coders, mode):
  coder = coders[mode]
  for blob in (coder.encode(TEXT, fallback=False), coder.encode(b"ab" * 300)):
    for n in (0, 3, 4, compression.FRAME.size, compression.FRAME.size + 4, len(blob) // 2, len(blob) - 4,
              len(blob) - 1):
      with pytest.raises(UserError):
        coder.decode(blob[:n])
    with pytest.raises(UserError):
      coder.decode(blob + b"\x00")


@pytest.mark.parametrize("mode", MODES)
def test_every_flipped_byte_is_detected_in_every_mode(coders, mode):
  coder = coders[mode]
  blobs = [coder.encode(TEXT[:40], fallback=False), coder.encode(b"ab" * 300), coder.encode(CASES["one_byte"])]
  assert [compression.mode_of(b) == "model" for b in blobs] == [True, False, False]
  for blob in blobs:
    for i in range(len(blob)):
      for mask in (0x01, 0x80):
        bad = bytearray(blob)
        bad[i] ^= mask
        with pytest.raises(UserError):
          coder.decode(bytes(bad))


@pytest.mark.parametrize("mode", MODES)
def test_wrong_predictions_are_caught_by_the_original_crc(coders, mode):
  # A stream altered with a matching file checksum stands in for a decoder whose floats differ.
  coder = coders[mode]
  blob = bytearray(coder.encode(TEXT, fallback=False))
  stream_start = len(coder.encode(b"", fallback=False)) - compression.WORD.size
  blob[stream_start] ^= 0x10  # the first bits decoded
  body = bytes(blob[:-4])
  forged = body + zlib.crc32(body).to_bytes(4, "little")
  with pytest.raises(UserError, match="CRC32|malformed"):
    coder.decode(forged)


@settings(max_examples=10, deadline=None)
@given(st.binary(min_size=1, max_size=60), st.integers(0, 10_000), st.integers(1, 255), st.booleans())
def test_property_corruption_is_detected(coders, data, where, mask, fallback):
  coder = coders["adaptive_mixing"]
  blob = bytearray(coder.encode(data, fallback=fallback))
  blob[where % len(blob)] ^= mask
  with pytest.raises(UserError):
    coder.decode(bytes(blob))


def test_network_bits_multiply_back_to_the_byte_distribution():
  """The 8 conditional bit probabilities of each byte multiply to its probability under the network (up to the
  2^-24 floor and 16-bit rounding): an independent check of the bitwise decomposition."""
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.full(256, 0.3), size=3).astype(np.float32)
  bits = cm.NetworkBits(3)
  bits.start(probs)
  for byte in (0, 65, 200, 255):
    c0, total = np.ones(3, np.int64), np.zeros(3)
    for j in range(8):
      b = (byte >> (7 - j)) & 1
      p1 = bits.p(c0, j) / cm.ONE
      total += np.log(p1 if b else 1 - p1)
      c0 = 2 * c0 + b
    np.testing.assert_allclose(np.exp(total), probs[:, byte], rtol=2e-2, atol=1e-5)


def test_squash_and_stretch_are_inverse_integer_logistics():
  x = np.arange(-cm.LOGIT_MAX, cm.LOGIT_MAX + 1)
  p = cm.squash(x)
  np.testing.assert_allclose(p / cm.ONE, 1 / (1 + np.exp(-x / 256)), atol=1 / cm.ONE)
  assert np.all(np.diff(p) >= 0) and p.dtype.kind == "i"
  np.testing.assert_array_equal(cm.squash(cm.stretch(p)), p)  # stretch inverts squash
  q = np.arange(1, cm.ONE)
  assert np.all(np.diff(cm.stretch(q)) >= 0) and cm.stretch(q).dtype.kind == "i"
  inside = (q > 30) & (q < cm.ONE - 30)  # beyond +-8 logits stretch clips
  err = np.abs(cm.stretch(q) - 256 * np.log(q / (cm.ONE - q)))[inside]
  assert np.all(err <= 1 + 256 / np.minimum(q, cm.ONE - q)[inside])  # one step of squash near p = 0 or 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, params):
  """A run directory as training writes it: config.json and a checkpoint holding the params."""
  path = tmp_path_factory.mktemp("run")
  with open(path / "config.json", "w") as f:
    json.dump(tiny_config().to_dict(), f, default=str)
  ckpt = ckpt_lib.Checkpointer(str(path / "checkpoints"), async_save=False)
  ckpt.save(1, {"params": params}, {"step": 1})
  ckpt.close()
  return path


def test_cli_round_trip_and_clean_failure(run_dir, tmp_path, capsys):
  src, packed, out = tmp_path / "in.bin", tmp_path / "in.lmac", tmp_path / "out.bin"
  src.write_bytes(TEXT * 2)
  args = [f"--checkpoint={run_dir}", f"--chunk_size={CHUNK}", f"--context={CONTEXT}", f"--batch_size={BATCH}",
          "--adapt_lr=0", "--no-mix"]
  compress.main(["encode", *args, str(src), str(packed)])
  compress.main(["decode", *args, str(packed), str(out)])
  assert out.read_bytes() == src.read_bytes()
  report = capsys.readouterr().out
  assert "bits/byte" in report and "bytes/s" in report

  bad = tmp_path / "bad.lmac"
  bad.write_bytes(packed.read_bytes()[:-3])
  with pytest.raises(SystemExit) as exit_:
    compress.main(["decode", *args, str(bad), str(tmp_path / "never.bin")])
  assert exit_.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err
  assert sorted(os.listdir(tmp_path)) == ["bad.lmac", "in.bin", "in.lmac", "out.bin"]  # no output, no temp file
