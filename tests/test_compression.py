"""Model-driven compression: exact round trips, size against the model's cross-entropy, corruption caught.

A tiny random model with 16-byte chunks and at most 4 lanes, so inputs of a few hundred bytes already span
several chunks, lanes and batches.
"""
import json
import os
import zlib

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lm import checkpoint as ckpt_lib
from lm import compress
from lm import compression
from lm.setup import Setup
from lm.errors import UserError
from tests.conftest import tiny_config

CHUNK, BATCH = 16, 4
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


@pytest.fixture(scope="module")
def setup():
  return Setup(tiny_config())


@pytest.fixture(scope="module")
def coder(setup):
  return compression.Coder(setup, setup.init_params(jax.random.PRNGKey(0)), chunk_size=CHUNK, batch_size=BATCH)


def scaled(coder, factor):
  """The same model with its (tied) embeddings scaled: sharper predictions, down to probabilities ~0."""
  params = dict(coder.params)
  params["embed"] = {"embedding": coder.params["embed"]["embedding"] * factor}
  return compression.Coder(coder.setup, params, chunk_size=CHUNK, batch_size=BATCH)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_is_exact(coder, name):
  data = CASES[name]
  blob = coder.encode(data)
  assert coder.decode(blob) == data


def test_bytes_the_model_rules_out_still_round_trip(coder):
  peaked = scaled(coder, 200.0)
  data = CASES["random_binary"]
  with peaked._context():
    cache = compression.model_lib.init_cache(peaked.model.cfg, 1, CHUNK)
    probs, _ = compression._step(peaked.model, peaked.params, cache, np.array([compression.START], np.int32))
  assert float(np.min(probs)) < 1e-30  # far below the coder's smallest probability, 2^-24
  assert peaked.decode(peaked.encode(data)) == data


def test_chunks_start_from_the_byte_before_them(coder):
  # 4 lanes of 2 chunks: the second chunk of each lane opens with its lane's previous byte.
  lanes = compression._lanes(np.frombuffer(bytes(range(128)), np.uint8), 8, 4, CHUNK, coder.pad_id)
  assert lanes.shape == (4, 2, CHUNK)
  np.testing.assert_array_equal(compression._starts(lanes, 8, 0), [compression.START] * 4)
  np.testing.assert_array_equal(compression._starts(lanes, 8, 1), [15, 47, 79, 111])


@pytest.mark.parametrize("factor", [1.0, 8.0])
def test_coded_size_matches_cross_entropy(coder, factor):
  model = scaled(coder, factor)
  data = (TEXT * 8)[:1000]
  blob = model.encode(data)
  ideal = model.cross_entropy_bits(data) / 8
  n_chunks = -(-len(data) // CHUNK)
  overhead = compression.HEADER.size + 4 + 4 * n_chunks  # container, plus a few bytes per chunk
  assert ideal * 0.99 <= len(blob) <= ideal * 1.01 + overhead, (len(blob), ideal)
  assert model.decode(blob) == data


def test_coded_distributions_equal_a_teacher_forced_softmax(coder):
  """Each byte is coded under p(byte | the bytes before it in its chunk, the chunk's start byte): checked against
  the model's full forward pass over each chunk, with a model whose prediction depends on the previous byte."""
  model = scaled(coder, 8.0)  # tied embeddings x 8: sharp predictions that follow the input byte
  data = (TEXT * 3)[:200]
  got = model.byte_probabilities(data)
  c = CHUNK
  n = -(-len(data) // c)
  rows = model.rows(n)
  lanes = compression._lanes(np.frombuffer(data, np.uint8), n, rows, c, model.pad_id)
  want = np.zeros((rows, lanes.shape[1], c, 256), np.float32)
  for k in range(lanes.shape[1]):
    inputs = np.concatenate([compression._starts(lanes, n, k)[:, None], lanes[:, k, :-1]], 1)
    with model._context():
      logits, _ = model.model.apply({"params": model.params}, inputs)
    want[:, k] = np.asarray(jax.nn.softmax(logits[..., :256].astype(np.float64)))
  want = want.reshape(-1, 256)[:len(data)]
  np.testing.assert_allclose(got, want, atol=1e-4)
  # the previous byte matters to this model: a stale context would give other distributions
  assert np.abs(want[1:] - want[:-1]).max() > 0.1


def test_coded_size_is_within_a_few_bytes_per_stream_of_the_cross_entropy(coder):
  model = scaled(coder, 4.0)
  data = (TEXT * 8)[:1000]
  blob = model.encode(data)
  ideal = model.cross_entropy_bits(data) / 8
  n_streams = -(-(-(-len(data) // CHUNK)) // model.rows(-(-len(data) // CHUNK)))
  framing = compression.HEADER.size + 4 + 4 * n_streams  # header, trailer, a word count per stream
  # the range coder flushes up to two 32-bit words per stream and quantises probabilities to 24 bits
  assert ideal - 1 <= len(blob) - framing <= ideal * 1.002 + 8 * n_streams, (len(blob), framing, ideal)


def test_another_model_is_rejected(coder):
  blob = coder.encode(TEXT)
  with pytest.raises(UserError, match="different model"):
    scaled(coder, 1.001).decode(blob)


def test_truncation_is_detected(coder):
  blob = coder.encode(TEXT)
  for n in (0, 3, 4, compression.HEADER.size, compression.HEADER.size + 4, len(blob) // 2, len(blob) - 4,
            len(blob) - 1):
    with pytest.raises(UserError):
      coder.decode(blob[:n])
  with pytest.raises(UserError):
    coder.decode(blob + b"\x00")


def test_every_flipped_byte_is_detected(coder):
  blob = coder.encode(TEXT[:40])
  for i in range(len(blob)):
    for mask in (0x01, 0x80):
      bad = bytearray(blob)
      bad[i] ^= mask
      with pytest.raises(UserError):
        coder.decode(bytes(bad))


def test_wrong_predictions_are_caught_by_the_original_crc(coder):
  # A stream altered with a matching file checksum stands in for a decoder whose floats differ.
  blob = bytearray(coder.encode(TEXT))
  blob[compression.HEADER.size + 4] ^= 0x10
  body = bytes(blob[:-4])
  forged = body + zlib.crc32(body).to_bytes(4, "little")
  with pytest.raises(UserError, match="CRC32|malformed"):
    coder.decode(forged)


@settings(max_examples=10, deadline=None)
@given(st.binary(max_size=100))
def test_property_binary_round_trip(coder, data):
  assert coder.decode(coder.encode(data)) == data


@settings(max_examples=5, deadline=None)
@given(st.text(max_size=40))
def test_property_text_round_trip(coder, text):
  data = text.encode("utf-8")
  assert coder.decode(coder.encode(data)) == data


@settings(max_examples=10, deadline=None)
@given(st.binary(min_size=1, max_size=60), st.integers(0, 10_000), st.integers(1, 255))
def test_property_corruption_is_detected(coder, data, where, mask):
  blob = bytearray(coder.encode(data))
  blob[where % len(blob)] ^= mask
  with pytest.raises(UserError):
    coder.decode(bytes(blob))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, coder):
  """A run directory as training writes it: config.json and a checkpoint holding the params."""
  path = tmp_path_factory.mktemp("run")
  with open(path / "config.json", "w") as f:
    json.dump(tiny_config().to_dict(), f, default=str)
  ckpt = ckpt_lib.Checkpointer(str(path / "checkpoints"), async_save=False)
  ckpt.save(1, {"params": coder.params}, {"step": 1})
  ckpt.close()
  return path


def test_cli_round_trip_and_clean_failure(run_dir, tmp_path, capsys):
  src, packed, out = tmp_path / "in.bin", tmp_path / "in.lmac", tmp_path / "out.bin"
  src.write_bytes(CASES["random_binary"])
  args = [f"--checkpoint={run_dir}", f"--chunk_size={CHUNK}", f"--batch_size={BATCH}"]
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
