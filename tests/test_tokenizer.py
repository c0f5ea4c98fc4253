import numpy as np
from hypothesis import given, strategies as st

from lm import tokenizer as tokenizer_lib

tok = tokenizer_lib.ByteTokenizer()


@given(st.binary(max_size=512))
def test_round_trip_any_bytes(data):
  ids = tok.encode(data, bos=True, eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert tok.decode_bytes(ids) == data
  assert int(tok.bytes_per_token()[ids].sum()) == len(data)


@given(st.text(max_size=200))
def test_round_trip_text(text):
  assert tok.decode(tok.encode(text)) == text


def test_specials_are_distinct_and_outside_bytes():
  ids = list(tok.special_ids.values())
  assert len(set(ids)) == len(ids) and min(ids) == 256 and tok.vocab_size == 256 + len(ids)
  assert np.all(tok.bytes_per_token()[ids] == 0)
