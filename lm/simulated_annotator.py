"""A simulated annotator for preference experiments: a hidden utility, and choices drawn from a Bradley-Terry model
with a temperature, so an experiment can dial annotator noise and measure what a reward model recovers.

The utility of an answer to a task's prompt is what a careful person checking it would value:
  task.check(prompt, answer)                       1 for the exact answer (the task's own checker)
  + partial * task's per-character partial credit  (lm/rewards/digits.py: a near miss beats a far one)
  - style_weight * len(answer)                     a style preference for short answers the checker ignores
The annotator prefers answer a to b with probability sigmoid((u(a) - u(b)) / noise): noise 0 always picks the
higher utility (a fair coin on a tie), a large noise picks at random.

`pair_files` makes the simulated training and held-out pairs of the preference objectives (lm/data/
preferences.py PairOptions.task): two answers sampled from the run's starting model to each prompt, judged, and
written as the JSONL a person's judgements export to, so both go through the same TFDS path.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import evaluate
from lm import tasks
from lm.data import preferences
from lm.data import sources
from lm.errors import UserError
from lm.rewards import digits

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Annotator:
  task: Any  # an lm.tasks.Task: its checker (and reference answer, for partial credit)
  noise: float = 0.0  # the Bradley-Terry temperature
  style_weight: float = 0.02
  partial: float = 0.5

  def utility(self, prompt: str, answer: str) -> float:
    u = float(self.task.check(prompt, answer)) - self.style_weight * len(answer)
    ref = self.task.reference(prompt) if hasattr(self.task, "reference") else None
    return u + (self.partial * digits.score(ref, answer) if ref is not None else 0.0)

  def prob_first(self, u_a: float, u_b: float) -> float:
    """P(a is preferred to b) under Bradley-Terry with temperature `noise`."""
    if self.noise == 0.0:
      return 1.0 if u_a > u_b else 0.0 if u_a < u_b else 0.5
    return 1.0 / (1.0 + math.exp(-(u_a - u_b) / self.noise))

  def judge(self, prompt: str, a: str, b: str, rng) -> tuple:
    """(chosen, rejected): one draw of the annotator's choice between answers a and b."""
    first = rng.random() < self.prob_first(self.utility(prompt, a), self.utility(prompt, b))
    return (a, b) if first else (b, a)


def win_rate(annotator: Annotator, prompts, answers_a, answers_b) -> float:
  """How often a beats b by the hidden utility (noise-free: the annotator's own judgement, not a coin; a tie
  counts half)."""
  u = lambda p, x: annotator.utility(p, x)
  wins = [np.sign(u(p, a) - u(p, b)) for p, a, b in zip(prompts, answers_a, answers_b)]
  return float(np.mean([(w + 1) / 2 for w in wins]))


def answers(model, params, tokenizer, prompts: list, rng, *, temperature: float, max_new_tokens: int) -> list:
  """One answer to each prompt (greedy at temperature 0)."""
  samples = evaluate.generate_responses(model, params, tokenizer, prompts, rng, max_new_tokens=max_new_tokens,
                                        temperature=temperature)
  return [s[0]["text"] for s in samples]


def compare(annotator: Annotator, prompts: list, answers_a: list, answers_b: list) -> dict:
  """How answers a fare against answers b (the starting model's) with this annotator: win rate, mean hidden
  utility of both, and the task checker's exact match of a."""
  return {"win_rate": win_rate(annotator, prompts, answers_a, answers_b),
          "utility": float(np.mean([annotator.utility(p, a) for p, a in zip(prompts, answers_a)])),
          "start_utility": float(np.mean([annotator.utility(p, b) for p, b in zip(prompts, answers_b)])),
          "checker_exact": float(np.mean([annotator.task.check(p, a) >= 1.0 for p, a in zip(prompts, answers_a)]))}


def sample_pairs(model, params, tokenizer, prompts: list, rng, *, temperature: float, max_new_tokens: int,
                 batch_size: int = 256) -> list:
  """Two sampled answers to each prompt: [(a, b), ...] (they may be the same text)."""
  samples = evaluate.generate_responses(model, params, tokenizer, prompts, rng, max_new_tokens=max_new_tokens, n=2,
                                        temperature=temperature, batch_size=batch_size)
  return [(s[0]["text"], s[1]["text"]) for s in samples]


def distinct_pairs(model, params, tokenizer, task, split: str, n: int, rng, *, seed: int, temperature: float,
                   max_new_tokens: int) -> list:
  """n (prompt, a, b) with a != b on `split` prompts: the pairs a person could judge (identical answers carry
  no preference, so their prompts are skipped and more are drawn)."""
  out, done, want = [], 0, n
  while len(out) < n:
    if want > 64 * n:
      raise UserError(f"simulated pairs: only {len(out)} of {done} prompts got two different answers at "
                      f"objective.sample_temperature={temperature}, short of {n}; raise the temperature")
    prompts = [ex.prompt for ex in task.examples(split, want, seed=seed)][done:]
    pairs = sample_pairs(model, params, tokenizer, prompts, jax.random.fold_in(rng, want),
                         temperature=temperature, max_new_tokens=max_new_tokens)
    out += [(p, a, b) for p, (a, b) in zip(prompts, pairs) if a != b]
    done, want = want, 2 * want
  return out[:n]


def fingerprint(params) -> str:
  """A short hash of the params' values (per-leaf sums and sums of squares; works on sharded arrays)."""
  stats = jax.jit(lambda p: [jnp.stack([jnp.sum(x), jnp.sum(jnp.square(x))]) for x in jax.tree.leaves(p)])(params)
  return hashlib.sha1(np.asarray(jax.device_get(stats), np.float64).tobytes()).hexdigest()[:12]


def pair_files(o, setup, params, seed: int) -> dict:
  """{"train": [path], "validation": [path] (when o.eval_pairs)}: simulated JSONL pairs from `params`, written once
  under <tfds dir>/simulated_pairs/<hash of the settings and params>/ and reused by any run that asks the same."""
  settings = {k: getattr(o, k) for k in ("task", "task_options", "pairs", "eval_pairs", "sample_temperature",
                                         "max_new_tokens", "noise", "style_weight")}
  key = hashlib.sha1(json.dumps({**settings, "seed": seed, "params": fingerprint(params)}, sort_keys=True,
                                default=str).encode()).hexdigest()[:12]
  folder = os.path.join(sources.data_dir(setup.config.data), "simulated_pairs", key)
  splits = {"train": ("train", o.pairs), "validation": ("test", o.eval_pairs)}
  paths = {name: [os.path.join(folder, f"{name}.jsonl")] for name, (_, n) in splits.items() if n}

  def write():
    task = tasks.get(o.task, **o.task_options)
    annotator = Annotator(task, noise=o.noise, style_weight=o.style_weight)
    os.makedirs(folder, exist_ok=True)
    for name, (split, n) in splits.items():
      if not n or os.path.exists(paths[name][0]):
        continue
      rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0x9A1 + (split == "test"))
      pairs = distinct_pairs(setup.model, params, setup.tokenizer, task, split, n, rng, seed=seed,
                             temperature=o.sample_temperature, max_new_tokens=o.max_new_tokens)
      choice_rng = np.random.default_rng([seed, 0x9A1, split == "test"])
      lines = [preferences.to_line(p, *annotator.judge(p, a, b, choice_rng)) for p, a, b in pairs]
      tmp = paths[name][0] + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
      os.replace(tmp, paths[name][0])  # complete or absent: a crash mid-write never leaves half a file
      log.info("simulated %d %s pairs (noise %g) in %s", n, split, o.noise, paths[name][0])

  sources.prepared(_Done(paths), write)
  return paths


class _Done:
  """sources.prepared's builder interface for a folder of files: prepared when every file exists."""

  def __init__(self, paths: dict):
    self.paths, self.name = paths, "simulated pairs"

  def is_prepared(self) -> bool:
    return all(os.path.exists(p[0]) for p in self.paths.values())
