"""Pairs to judge: a prompt from the prompts file (in turn) and two answers sampled from the checkpoint at a
temperature (lm/simulated_annotator.sample_pairs, the path simulated preferences use)."""
import itertools
import os
import threading

import jax

from lm import chat
from lm import runs
from lm import simulated_annotator
from lm.data import jsonl
from lm.errors import UserError


def read_prompts(path: str) -> list:
  """[(where, prompt)] from a .jsonl file of {"prompt": ...} objects or a text file of one prompt per line."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise UserError(f"--prompts: cannot read {path}: {e.strerror}") from None
  except UnicodeDecodeError:
    raise UserError(f"--prompts: {path} is not UTF-8 text") from None
  out = []
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f"{path}:{i}"
    if path.endswith(".jsonl"):
      obj = jsonl.load_object(line, where, "a prompt")
      if not isinstance(obj.get("prompt"), str):
        raise UserError(f"{where}: prompt missing or not a string (each line needs {{\"prompt\": ...}})")
      line = obj["prompt"]
    out.append((where, line))
  if not out:
    raise UserError(f"--prompts: {path} holds no prompts (one per line, or JSONL {{\"prompt\": ...}})")
  return out


class Sampler:
  """next() -> (prompt, answer a, answer b, settings) for a checkpoint; thread-safe (one sample at a time)."""

  def __init__(self, run_dir: str, prompts_path: str, *, temperature: float = 1.0, max_new_tokens: int = 32,
               seed: int = 0, retries: int = 4):
    self.prompts = read_prompts(prompts_path)  # read first: a bad prompts file fails before any model loads
    self.setup, self.params = runs.load(run_dir)
    max_len = self.setup.model.cfg.max_len
    for where, prompt in self.prompts:
      n = len(chat.prompt_ids(self.setup.tokenizer, prompt))
      if n + max_new_tokens > max_len:
        raise UserError(f"{where}: the prompt is {n} tokens (with the chat template); with --max_new_tokens="
                        f"{max_new_tokens} that exceeds the model's context of {max_len}; shorten it or lower "
                        "--max_new_tokens")
    self.settings = {"checkpoint": os.path.abspath(run_dir), "temperature": temperature,
                     "max_new_tokens": max_new_tokens, "seed": seed}
    self.retries, self.key = retries, jax.random.PRNGKey(seed)
    self.counter, self.lock = itertools.count(), threading.Lock()

  def __call__(self) -> tuple:
    with self.lock:
      i = next(self.counter)
      _, prompt = self.prompts[i % len(self.prompts)]
      for attempt in range(self.retries):  # two identical answers prefer nothing: draw again a few times
        key = jax.random.fold_in(jax.random.fold_in(self.key, i), attempt)
        with self.setup.use():
          (a, b), = simulated_annotator.sample_pairs(
              self.setup.model, self.params, self.setup.tokenizer, [prompt], key,
              temperature=self.settings["temperature"], max_new_tokens=self.settings["max_new_tokens"])
        if a != b:
          break
    return prompt, a, b, {**self.settings, "sample": i, "attempt": attempt}

