"""Supervised fine-tuning: the pretraining loss on `answer EOS` tokens of chat-formatted, packed examples.

Data: a task's generated train split (objective.task) or JSONL files (objective.train_files, through TFDS).
Evaluation adds to the loop's held-out bits per byte: the task's greedy exact match, pass@k and best-of-n on
its test split, and with objective.eval_files the answer loss on held-out JSONL examples.
Options and their defaults: configs/sft_jsonl.py.
"""
import logging

import grain
import jax
import numpy as np

from lm import evaluate
from lm import sharding
from lm import tasks
from lm.data import jsonl
from lm.data import sft as sft_data
from lm.data import sources
from lm.errors import UserError
from lm.objectives import Objective
from lm.objectives import pretrain

log = logging.getLogger(__name__)

OPTIONS = ("train_files", "eval_files", "task", "task_options", "train_examples", "system", "overlong",
           "eval_task", "eval_examples", "max_new_tokens", "pass_n", "pass_k", "pass_prompts", "temperature",
           "gen_batch")


def _records(o, data_cfg, seed: int) -> tuple:
  """(train records, eval records or None), each a random-access sequence of dicts."""
  if o.task:
    task = tasks.get(o.task, **dict(o.task_options))
    train = [{"prompt": ex.prompt, "answer": ex.answer}
             for ex in task.examples("train", int(o.train_examples), seed=seed)]
    return train, None
  split_files = {"train": jsonl.files(o.train_files)}
  if o.eval_files:
    split_files["validation"] = jsonl.files(o.eval_files)
  srcs = jsonl.source(split_files, sources.data_dir(data_cfg))
  as_records = lambda src: grain.MapDataset.source(src).map(jsonl.record)
  return as_records(srcs["train"]), as_records(srcs["validation"]) if o.eval_files else None


def packed_rows(tokenizer, records, o, seq_len: int, seed: int, name: str) -> tuple:
  """(rows, counts): records formatted, fitted to the context, shuffled with the seed and packed once."""
  examples, counts = sft_data.prepare(tokenizer, records, seq_len, o.overlong, o.system, name=name)
  order = np.random.default_rng([seed, 1]).permutation(len(examples))
  rows = sft_data.pack([examples[i] for i in order], seq_len)
  log.info("%s: %d examples packed into %d rows of %d slots (%.0f%% filled)", name, len(examples),
           len(rows["inputs"]), seq_len, 100 * sft_data.utilization(rows))
  return rows, counts


def build(config, model, tokenizer) -> Objective:
  o = config.objective
  missing = [k for k in OPTIONS if k not in o]
  if missing:
    raise UserError(f"objective.name='sft' needs objective.{', objective.'.join(missing)}; "
                    "start the config from configs/sft_jsonl.py")
  seq_len = config.data.seq_len
  train_records, eval_records = _records(o, config.data, config.seed)
  rows, counts = packed_rows(tokenizer, train_records, o, seq_len, config.seed, "SFT train data")
  data_metrics = {f"sft_{k}": v for k, v in counts.items()}
  eval_rows = None
  if eval_records is not None:
    eval_rows, eval_counts = packed_rows(tokenizer, eval_records, o, seq_len, config.seed, "SFT eval data")
    data_metrics.update({f"sft_eval_{k}": v for k, v in eval_counts.items()})

  eval_task_name = o.eval_task or o.task
  eval_task = tasks.get(eval_task_name, **dict(o.task_options)) if eval_task_name else None
  test = eval_task.examples("test", int(o.eval_examples), seed=config.seed) if eval_task else []
  if test:
    _check_fits(tokenizer, test, o, model.cfg.max_len)
  mesh = sharding.make_mesh(config.mesh)

  def evaluate_fn(params, step):
    out = dict(data_metrics)
    if eval_rows is not None:
      held = evaluate.bits_per_byte(model, params, sft_data.eval_batches(eval_rows, config.eval.batch_size),
                                    tokenizer, mesh)
      out.update({f"sft_{k}": v for k, v in held.items()})
    if test:
      out.update(evaluate.task_metrics(
          model, params, tokenizer, eval_task, test, jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
          max_new_tokens=int(o.max_new_tokens), ks=tuple(o.pass_k), n=int(o.pass_n),
          pass_prompts=int(o.pass_prompts), temperature=float(o.temperature), batch_size=int(o.gen_batch),
          system=o.system))
    return out

  return Objective(loss_fn=pretrain.token_loss_fn(model, config.train.z_loss),
                   batches=sft_data.PackedBatches(rows, config.train.batch_size, config.seed),
                   evaluate=evaluate_fn)


def _check_fits(tokenizer, examples, o, max_len: int):
  """Fail before training, not at the first eval, if a test prompt plus the answer budget exceeds the context."""
  from lm import chat
  n, prompt = max((len(chat.prompt_ids(tokenizer, ex.prompt, o.system or None)), ex.prompt) for ex in examples)
  if n + int(o.max_new_tokens) > max_len:
    raise UserError(f"task {prompt!r}: prompt of {n} tokens + objective.max_new_tokens={o.max_new_tokens} "
                    f"exceeds model.max_len={max_len}; shorten the task or lower objective.max_new_tokens")
  if o.pass_n and max(o.pass_k) > o.pass_n:
    raise UserError(f"objective.pass_k={tuple(o.pass_k)} has k > objective.pass_n={o.pass_n} samples per prompt")
