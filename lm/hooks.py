"""Extras that attach to the train loop as hooks (Levanter's `add_hook(cb, every=N)`): evaluation, the sample
printed after training, and anything a caller adds (tests inject faults this way). The loop calls each hook
whose cadence is due after a step, in order, and records what it returns.

A hook is `Hook(fn, every=N)`: fn(info: StepInfo) -> dict | None, run at steps divisible by N and, with
at_end, at the last step; `after_checkpoint` hooks run after that step's checkpoint save was started.
"""
import dataclasses
import sys
from typing import Any, Callable

import jax
from tqdm import tqdm

from lm import evaluate
from lm import sampling
from lm.data import lm_batches


@dataclasses.dataclass
class StepInfo:
  step: int  # steps done
  last: bool  # the run's final step
  state: Any  # the TrainState after this step
  metrics: dict  # this step's train metrics (device arrays)
  setup: Any
  objective: Any
  writer: Any  # lm.metrics.Writer
  checkpointer: Any  # lm.checkpoint.Checkpointer
  results: dict = dataclasses.field(default_factory=dict)  # what this step's hooks returned (eval metrics)


@dataclasses.dataclass
class Hook:
  fn: Callable[[StepInfo], dict | None]
  every: int = 1  # 0: only at the end (with at_end)
  at_end: bool = True
  after_checkpoint: bool = False
  # Given the run's abstract TrainState before the first step: compile what fn will run, beside the train step's
  # own compile (the speedrun's first evaluation took ~1 s longer than the next ones without it, measured).
  ahead: Callable[[Any], None] | None = None

  def due(self, step: int, last: bool) -> bool:
    return (self.every > 0 and step % self.every == 0) or (self.at_end and last)


def evaluation(setup, objective) -> Hook:
  """Held-out bits per byte on config.data's eval split, plus the objective's own metrics, as one eval event."""
  config = setup.config
  tokens = lm_batches.split_tokens(config.data, config.data.eval_split, setup.tokenizer)

  def fn(info: StepInfo) -> dict:
    batches = lm_batches.eval_batches(tokens, config.data.seq_len, config.eval.batch_size, config.eval.max_batches)
    result = evaluate.bits_per_byte(setup.model, info.state.params, batches, setup.tokenizer, setup.mesh)
    if objective.evaluate is not None:
      result.update(objective.evaluate(info.state.params, info.step))
    info.writer.write(info.step, "eval", result)
    if jax.process_index() == 0:
      tqdm.write(f"step {info.step}: eval loss {result['loss']:.4f}, bits/byte {result['bits_per_byte']:.4f}",
                 file=sys.stderr)
    return result

  def ahead(abstract_state):
    evaluate.compile_bits_per_byte(setup.model, abstract_state.params, config.eval.batch_size, config.data.seq_len,
                                   setup.tokenizer, setup.mesh)

  return Hook(fn, every=config.eval.every, ahead=ahead)


def final_sample(setup) -> Hook:
  """After the last step, print a sample of config.eval.sample_tokens tokens (process 0)."""
  e = setup.config.eval

  def fn(info: StepInfo):
    if jax.process_index() == 0:
      text = sampling.sample_text(setup.model, info.state.params, setup.tokenizer, e.sample_prompt, e.sample_tokens,
                                  jax.random.PRNGKey(setup.config.seed))
      tqdm.write(f"--- sample ---\n{text}\n---", file=sys.stderr)

  return Hook(fn, every=0)


def defaults(setup, objective) -> list:
  hooks = [evaluation(setup, objective)]
  if setup.config.eval.sample_tokens:
    hooks.append(final_sample(setup))
  return hooks
