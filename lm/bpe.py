"""Byte-level BPE trained on the run's own text (config.tokenizer = "bpe:<vocab size>"), so pretraining from
scratch can use a subword vocabulary.

GPT-2's recipe through the `tokenizers` library: the text is split with GPT-2's regex, written in the byte
alphabet (all 256 bytes are in the initial vocabulary, so any text encodes and decodes exactly), and merges are
learned up to the vocabulary size. Ids 0-5 are lm.tokenizer's SPECIALS, so the native chat template applies.
The tokenizer is trained once per (training text, size) and cached as tokenizer.json under the TFDS data
directory, so every later command (resume, eval, export) reads the same one.
"""
import hashlib
import os

from lm.errors import UserError
from lm.tokenizer import SPECIALS

VERSION = "1"  # part of the cache key: bump when training changes


def train(texts, vocab_size: int):
  """A `tokenizers` Tokenizer trained on an iterable of strings."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return tok


def get(vocab_size: int, data_cfg):
  """The BPE tokenizer of data_cfg's training split with vocab_size tokens (trained on first use)."""
  from lm.data import sources
  from lm.hf import tokenizer as hf_tokenizer
  least = 256 + len(SPECIALS)
  if vocab_size < least:
    raise UserError(f"tokenizer=bpe:{vocab_size}: the vocabulary needs at least {least} tokens (256 bytes and "
                    f"{len(SPECIALS)} specials)")
  split = data_cfg.train_split
  source = sources.source(data_cfg, split)
  texts = [source[i]["text"] for i in range(len(source))]
  key = hashlib.sha1(f"{VERSION}:{vocab_size}:".encode())
  for t in texts:
    key.update(hashlib.sha1(t).digest())
  file = os.path.join(sources.data_dir(data_cfg), "bpe", key.hexdigest()[:16], "tokenizer.json")

  def make():
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tok = train((t.decode("utf-8") for t in texts), vocab_size)
    tmp = f"{file}.tmp{os.getpid()}"
    tok.save(tmp)
    os.replace(tmp, file)  # atomic: a concurrent reader sees a whole file or none

  import jax
  if jax.process_index() == 0 and not os.path.exists(file):
    make()
  sources.sync(f"bpe tokenizer {file}")
  return hf_tokenizer.HFTokenizer(file)
