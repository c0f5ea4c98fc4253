"""Byte-level BPE trained on the run's text (config.tokenizer = "bpe:N"): every byte round-trips, byte accounting is
exact, the tokenizer is cached and deterministic, and the native chat template works with it."""
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lm import bpe
from lm import chat
from lm import tokenizer as tokenizer_lib
from lm.data import lm_batches
from lm.errors import UserError

VOCAB = 512


@pytest.fixture(scope="module")
def trained(shakespeare):
  t0 = time.time()
  tok = tokenizer_lib.get(f"bpe:{VOCAB}", shakespeare)
  return tok, time.time() - t0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_every_byte_string_round_trips(trained, data):
  tok = trained[0]
  ids = tok.encode(data)
  assert tok.decode_bytes(ids) == data
  assert int(tok.bytes_per_token()[ids].sum()) == len(data)


def test_shakespeare_round_trips_and_compresses(trained, shakespeare):
  tok = trained[0]
  text = lm_batches.split_tokens(shakespeare, "validation", tokenizer_lib.ByteTokenizer())
  raw = bytes(text.astype(np.uint8))
  ids = tok.encode(raw)
  assert tok.decode_bytes(ids) == raw and tok.decode(ids) == raw.decode()
  assert int(tok.bytes_per_token()[ids].sum()) == len(raw)
  assert tok.vocab_size == VOCAB
  assert len(ids) / len(raw) < 0.6  # merges were learned: 1.88 bytes per token at 512 (measured; bytes: 1)


def test_cached_and_deterministic(trained, shakespeare):
  t0 = time.time()
  again = tokenizer_lib.get(f"bpe:{VOCAB}", shakespeare)
  assert time.time() - t0 < trained[1] or time.time() - t0 < 1.0  # read from the cache, not trained again
  text = "ROMEO: But soft, what light through yonder window breaks?"
  np.testing.assert_array_equal(again.encode(text), trained[0].encode(text))
  fresh = bpe.train([bytes(lm_batches.split_tokens(shakespeare, "train", tokenizer_lib.ByteTokenizer())
                           .astype(np.uint8)).decode()], VOCAB)
  assert fresh.encode(text).ids == trained[0].encode(text).tolist()


def test_native_chat_template(trained):
  tok = trained[0]
  assert tok.chat_template is None and set(tok.role_ids) == {"system", "user", "assistant"}
  ids = chat.prompt_ids(tok, "12+5=")
  assert ids[0] == tok.bos_id and ids[1] == tok.role_ids["user"] and ids[-1] == tok.role_ids["assistant"]
  assert tok.decode(ids) == "12+5="
  assert chat.answer_ids(tok, "17")[-1] == tok.eos_id


def test_too_small_a_vocabulary(shakespeare):
  with pytest.raises(UserError) as e:
    tokenizer_lib.get("bpe:100", shakespeare)
  assert "at least 262 tokens" in str(e.value)
