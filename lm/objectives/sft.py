"""Supervised fine-tuning: the next-token loss on `answer EOS` tokens of chat-formatted, packed examples.

Data: a task's generated train split (objective.task) or JSONL files (objective.train_files, through TFDS).
Evaluation adds to the loop's held-out bits per byte: the task's greedy exact match, pass@k and best-of-n on
its test split, and with objective.eval_files the answer loss on held-out JSONL examples.
"""
import dataclasses
import functools
import logging

import grain
import jax
import numpy as np

from lm import chat
from lm import evaluate
from lm import losses
from lm import objective as objective_lib
from lm import options
from lm import tasks
from lm.data import jsonl
from lm.data import lm_batches
from lm.data import sft as sft_data
from lm.data import sources
from lm.errors import UserError
from lm.options import option

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Options(options.Group):
  train_files: str = option("", doc="a .jsonl file, a directory of them, or a glob (when objective.task is '')")
  eval_files: str = option("", doc="optional held-out JSONL: answer loss / bits per byte at every eval (sft_*)")
  task: str = option("", doc="instead of files: generate training data from lm/tasks/<task>.py (its train split)")
  task_options: dict = option({}, doc="the task's make(**options), e.g. digits=3")
  train_examples: int = option(100000, min=1, doc="generated task examples (packed once, reshuffled every epoch)")
  system: str = option("", doc="optional system prompt for every example")
  overlong: str = option("truncate", choices=sft_data.OVERLONG,
                         doc="examples longer than data.seq_len + 1 tokens (counts are logged)")
  eval_task: str = option("", doc="task scored on its test split at every eval ('': objective.task)")
  eval_examples: int = option(500, min=0, doc="test problems for greedy exact match")
  max_new_tokens: int = option(8, min=1, doc="generation budget per answer (prompt + this must fit model.max_len)")
  pass_n: int = option(16, min=0, doc="samples per problem for pass@k and best-of-n (0: skip them)")
  pass_k: tuple = option((1, 4, 16))
  pass_prompts: int = option(100, min=0, doc="the first this many test problems get pass_n samples each")
  temperature: float = option(1.0, min=0.0, doc="sampling temperature for pass@k / best-of-n")
  gen_batch: int = option(256, min=1, doc="rows per generation call")
  # a pretraining mix against forgetting: ptx_rows rows of config.data text per step, their next-token loss
  # added with weight ptx_coef (as PPO-ptx does in policy gradient)
  ptx_coef: float = option(0.0, min=0.0)
  ptx_rows: int = option(8, min=1)

  def check(self, config) -> list:
    problems = []
    if not self.task and not self.train_files:
      problems.append("objective.task or objective.train_files must name the training data")
    if self.pass_n and max(self.pass_k, default=0) > self.pass_n:
      problems.append(f"objective.pass_k={self.pass_k} has k > objective.pass_n={self.pass_n} samples per prompt")
    if self.ptx_coef and self.ptx_rows % config.train.grad_accum:
      problems.append(f"objective.ptx_rows={self.ptx_rows} must divide by train.grad_accum")
    return problems


def mixed_loss_fn(model, z_loss: float, ptx_coef: float):
  """The SFT loss on batch["sft"] plus ptx_coef x the next-token loss on the pretraining rows batch["ptx"]."""
  token_loss = losses.token_loss_fn(model, z_loss)

  def loss_fn(params, batch, rng):
    loss, metrics = token_loss(params, batch["sft"], rng)
    ptx_loss, _ = token_loss(params, batch["ptx"], rng)
    return loss + ptx_coef * ptx_loss, {**metrics, "ptx_loss": ptx_loss}

  return loss_fn


def _records(o: Options, data_cfg, seed: int) -> tuple:
  """(train records, eval records or None), each a random-access sequence of dicts."""
  if o.task:
    task = tasks.get(o.task, **o.task_options)
    train = [{"prompt": ex.prompt, "answer": ex.answer} for ex in task.examples("train", o.train_examples, seed=seed)]
    return train, None
  split_files = {"train": jsonl.files(o.train_files)}
  if o.eval_files:
    split_files["validation"] = jsonl.files(o.eval_files)
  srcs = jsonl.source(split_files, sources.data_dir(data_cfg))
  as_records = lambda src: grain.MapDataset.source(src).map(jsonl.record)
  return as_records(srcs["train"]), as_records(srcs["validation"]) if o.eval_files else None


def packed_rows(tokenizer, records, o: Options, seq_len: int, seed: int, name: str) -> tuple:
  """(rows, counts): records formatted, fitted to the context, shuffled with the seed and packed once."""
  examples, counts = sft_data.prepare(tokenizer, records, seq_len, o.overlong, o.system, name=name)
  order = np.random.default_rng([seed, 1]).permutation(len(examples))
  rows = sft_data.pack([examples[i] for i in order], seq_len)
  log.info("%s: %d examples packed into %d rows of %d slots (%.0f%% filled)", name, len(examples),
           len(rows["inputs"]), seq_len, 100 * sft_data.utilization(rows))
  return rows, counts


def build(setup) -> objective_lib.Objective:
  config, model, tokenizer = setup.config, setup.model, setup.tokenizer
  o = objective_lib.parse_options(Options, config)
  seq_len = config.data.seq_len
  eval_task_name = o.eval_task or o.task
  eval_task = tasks.get(eval_task_name, **o.task_options) if eval_task_name else None
  test = eval_task.examples("test", o.eval_examples, seed=config.seed) if eval_task else []
  if test:
    _check_fits(tokenizer, test, o, model.cfg.max_len)

  @functools.cache
  def data():
    """(train rows, eval rows or None, data counts), prepared once, on first use."""
    train_records, eval_records = _records(o, config.data, config.seed)
    rows, counts = packed_rows(tokenizer, train_records, o, seq_len, config.seed, "SFT train data")
    counts = {f"sft_{k}": v for k, v in counts.items()}
    eval_rows = None
    if eval_records is not None:
      eval_rows, eval_counts = packed_rows(tokenizer, eval_records, o, seq_len, config.seed, "SFT eval data")
      counts.update({f"sft_eval_{k}": v for k, v in eval_counts.items()})
    return sft_data.PackedBatches(rows, config.train.batch_size, config.seed), eval_rows, counts

  def evaluate_fn(params, step):
    _, eval_rows, counts = data()
    out = dict(counts)
    if eval_rows is not None:
      held = evaluate.bits_per_byte(model, params, sft_data.eval_batches(eval_rows, config.eval.batch_size),
                                    tokenizer, setup.mesh)
      out.update({f"sft_{k}": v for k, v in held.items()})
    if test:
      out.update(evaluate.task_metrics(
          model, params, tokenizer, eval_task, test, jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
          max_new_tokens=o.max_new_tokens, ks=o.pass_k, n=o.pass_n, pass_prompts=o.pass_prompts,
          temperature=o.temperature, batch_size=o.gen_batch, system=o.system))
    return out

  if not o.ptx_coef:
    return objective_lib.Objective(
        loss_fn=losses.token_loss_fn(model, config.train.z_loss),
        batches=lambda step, params: objective_lib.Batch(data()[0](step)),
        batch_shapes=lambda: lm_batches.shapes(config.train.batch_size, seq_len),
        evaluate=evaluate_fn)

  @functools.cache
  def pretraining():
    text = lm_batches.split_tokens(config.data, config.data.train_split, tokenizer)
    return lm_batches.RandomWindows(text, seq_len, o.ptx_rows, config.seed + 1)

  return objective_lib.Objective(
      loss_fn=mixed_loss_fn(model, config.train.z_loss, o.ptx_coef),
      batches=lambda step, params: objective_lib.Batch({"sft": data()[0](step), "ptx": pretraining()(step)}),
      batch_shapes=lambda: {"sft": lm_batches.shapes(config.train.batch_size, seq_len),
                            "ptx": lm_batches.shapes(o.ptx_rows, seq_len)},
      evaluate=evaluate_fn)


def _check_fits(tokenizer, examples, o: Options, max_len: int):
  """Fail before training, not at the first eval, if a test prompt plus the answer budget exceeds the context."""
  n, prompt = max((len(chat.prompt_ids(tokenizer, ex.prompt, o.system or None)), ex.prompt) for ex in examples)
  if n + o.max_new_tokens > max_len:
    raise UserError(f"task {prompt!r}: prompt of {n} tokens + objective.max_new_tokens={o.max_new_tokens} "
                    f"exceeds model.max_len={max_len}; shorten the task or lower objective.max_new_tokens")
