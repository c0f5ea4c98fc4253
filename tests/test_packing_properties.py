"""Property tests for packing: any set of examples packs losslessly, each into one segment of one row."""
import numpy as np
from hypothesis import given, settings, strategies as st

from lm.data import sft as sft_data

SEQ = 16


@st.composite
def examples(draw):
  n = draw(st.integers(1, 40))
  out = []
  for _ in range(n):
    length = draw(st.integers(2, SEQ + 1))  # an example fills length - 1 slots
    ids = np.asarray(draw(st.lists(st.integers(0, 261), min_size=length, max_size=length)), np.int32)
    split = draw(st.integers(1, length - 1))
    mask = np.concatenate([np.zeros(split, np.int32), np.ones(length - split, np.int32)])
    out.append((ids, mask))
  return out


@settings(max_examples=60, deadline=None)
@given(examples())
def test_pack_is_lossless_and_segments_are_whole(exs):
  rows = sft_data.pack(exs, SEQ)
  recovered = []
  for r in range(len(rows["inputs"])):
    seg = rows["segment_ids"][r]
    used = seg > 0
    # used slots are a prefix, segment ids count up from 1 without gaps, positions restart in each segment
    assert np.all(used[:used.sum()]) and not used[used.sum():].any()
    ids_in_row = seg[used]
    assert np.all(np.diff(ids_in_row) >= 0) and set(ids_in_row) == set(range(1, ids_in_row.max() + 1))
    for s in range(1, ids_in_row.max() + 1):
      where = np.nonzero(seg == s)[0]
      np.testing.assert_array_equal(rows["positions"][r, where], np.arange(len(where)))
      inputs, targets = rows["inputs"][r, where], rows["targets"][r, where]
      np.testing.assert_array_equal(inputs[1:], targets[:-1])  # one contiguous example
      recovered.append((np.concatenate([inputs, targets[-1:]]), rows["weights"][r, where]))
    assert not rows["weights"][r, ~used].any()
  want = sorted((ids.tolist(), mask[1:].tolist()) for ids, mask in exs)
  got = sorted((ids.tolist(), w.astype(int).tolist()) for ids, w in recovered)
  assert got == want
