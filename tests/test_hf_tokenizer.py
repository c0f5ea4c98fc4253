"""Trained tokenizers behind lm.tokenizer's interface: against the `tokenizers` and `sentencepiece` libraries
themselves, exact byte accounting, chat templates against transformers' own rendering, and one-line errors."""
import json
import os
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lm import chat
from lm import tokenizer as tokenizer_lib
from lm.errors import UserError
from lm.hf import tokenizer as hf_tokenizer

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def sample_text() -> str:
  """The first 200 kB of Tiny Shakespeare (tests/conftest.py points $LM_MANUAL_DIR at it)."""
  return (pathlib.Path(os.environ["LM_MANUAL_DIR"]) / "input.txt").read_text()[:200_000]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(our tokenizer, the `tokenizers` library's) for a byte-level BPE tokenizer.json trained here, with ChatML
  specials and template in its tokenizer_config.json."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([sample_text()], trainers.BpeTrainer(
      vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  d = tmp_path_factory.mktemp("chatml")
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                                        "bos_token": None, "chat_template": CHATML}))
  return tokenizer_lib.get(f"hf:{d}"), tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")), str(d)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_encode_decode_equal_the_tokenizers_library(trained, text):
  ours, lib = trained[:2]
  ids = ours.encode(text)
  assert ids.tolist() == lib.encode(text, add_special_tokens=False).ids
  assert ours.decode(ids) == lib.decode(ids.tolist())
  # exact byte accounting: the tokens' bytes are the text's, so bits per byte divides by the right count
  assert ours.decode_bytes(ids) == text.encode("utf-8")
  assert int(ours.bytes_per_token()[ids].sum()) == len(text.encode("utf-8"))


def test_specials_and_template_eos(trained):
  ours, lib = trained[:2]
  assert ours.vocab_size == 600 and ours.bos_id is None
  assert ours.eos_id == lib.token_to_id("<|im_end|>")  # the template's end of turn, not <|endoftext|>
  assert ours.pad_id == lib.token_to_id("<|endoftext|>")
  assert ours.bytes_per_token()[[ours.eos_id, ours.pad_id]].tolist() == [0, 0]


def test_chat_template_matches_transformers(trained):
  transformers = pytest.importorskip("transformers")
  ours, _, d = trained
  theirs = transformers.AutoTokenizer.from_pretrained(d)
  convo = [{"role": "system", "content": "Add."}, {"role": "user", "content": "12+5="}]
  want = theirs.apply_chat_template(convo, add_generation_prompt=True, tokenize=True)
  want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
  assert chat.prompt_ids(ours, "12+5=", system="Add.").tolist() == list(want)


def test_template_messages_mask_covers_assistant_turns(trained):
  ours = trained[0]
  messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "bc"},
              {"role": "user", "content": "d"}, {"role": "assistant", "content": "e"}]
  ids, mask = chat.messages_ids(ours, messages)
  assert ours.decode_bytes(ids[mask == 1]) == b"bc\ne\n"  # each turn's content, its <|im_end|> and newline
  assert (ids[mask == 1] == ours.eos_id).sum() == 2
  assert ours.decode(ids) == "user\na\nassistant\nbc\nuser\nd\nassistant\ne\n"  # specials dropped
  # the same prompt tokens generation starts from
  n = len(chat.prompt_ids(ours, "a"))
  np.testing.assert_array_equal(ids[:n], chat.prompt_ids(ours, "a"))


def test_exported_byte_tokenizer_is_the_byte_tokenizer(tmp_path):
  """The tokenizer.json written beside exported models gives the byte tokenizer's ids, template included."""
  hf_tokenizer.save(tokenizer_lib.ByteTokenizer(), str(tmp_path), 64)
  ours, byte = tokenizer_lib.get(f"hf:{tmp_path}"), tokenizer_lib.ByteTokenizer()
  text = "ROMEO: héllo\n<user> 12+5="
  np.testing.assert_array_equal(ours.encode(text.replace("<user>", "")), byte.encode(text.replace("<user>", "")))
  np.testing.assert_array_equal(ours.bytes_per_token()[:byte.vocab_size], byte.bytes_per_token())
  assert (ours.eos_id, ours.bos_id, ours.pad_id) == (byte.eos_id, byte.bos_id, byte.pad_id)
  np.testing.assert_array_equal(chat.prompt_ids(ours, "12+5=", "sys"), chat.prompt_ids(byte, "12+5=", "sys"))
  np.testing.assert_array_equal(chat.answer_ids(ours, "17"), chat.answer_ids(byte, "17"))
  messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "bc"}]
  for x, y in zip(chat.messages_ids(ours, messages), chat.messages_ids(byte, messages)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  import sentencepiece
  d = tmp_path_factory.mktemp("spm")
  (d / "text.txt").write_text(sample_text()[:100_000])
  sentencepiece.SentencePieceTrainer.train(input=str(d / "text.txt"), model_prefix=str(d / "tokenizer"),
                                           vocab_size=400, byte_fallback=True, model_type="bpe",
                                           normalization_rule_name="identity", remove_extra_whitespaces=False,
                                           minloglevel=2)  # no normalization, as Llama 2's
  return str(d / "tokenizer.model")


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=200))
def test_sentencepiece_equals_the_library(spm_model, text):
  import sentencepiece
  ours = tokenizer_lib.get(f"sentencepiece:{spm_model}")
  lib = sentencepiece.SentencePieceProcessor(model_file=spm_model)
  ids = ours.encode(text)
  assert ids.tolist() == lib.encode(text)
  assert ours.decode(ids) == lib.decode(ids.tolist())
  # Byte pieces count one byte, "▁" one space: the text's bytes plus the dummy prefix space SentencePiece adds
  # before every text (and decoding drops).
  assert int(ours.bytes_per_token()[ids].sum()) == len(text.encode("utf-8")) + bool(text)


def test_sentencepiece_special_tokens_in_text_become_their_ids(spm_model):
  ours = tokenizer_lib.get(f"sentencepiece:{spm_model}")
  ids = ours.encode("<s>hi</s>").tolist()
  assert ids[0] == ours.bos_id and ids[-1] == ours.eos_id and len(ids) > 2


@pytest.mark.parametrize("spec, needle", [
    ("bytes", "is not a tokenizer"), ("hf:/nonexistent/dir", "no such file or directory"),
    ("sentencepiece:/nonexistent.model", "no such file"), ("bpe:lots", "takes a number of tokens")])
def test_bad_tokenizer_specs_are_one_line(spec, needle):
  with pytest.raises(UserError) as e:
    tokenizer_lib.get(spec)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_directory_without_a_tokenizer(tmp_path):
  with pytest.raises(UserError) as e:
    tokenizer_lib.get(f"hf:{tmp_path}")
  assert "neither tokenizer.json nor tokenizer.model" in str(e.value)


def test_vocabulary_too_big_for_the_model(trained):
  with pytest.raises(UserError) as e:
    tokenizer_lib.check_fits(trained[0], "hf:x", 512)
  assert str(e.value).startswith("tokenizer 'hf:x' has 600 tokens but model.vocab_size=512")
  assert os.path.isdir(trained[2])
