"""Supervised fine-tuning on local JSONL files, from a pretraining run or from scratch:

python launch.py --config=configs/sft_jsonl.py --workdir=runs/sft --config.objective.train_files=data/train.jsonl \
  --config.checkpoint.init_from=runs/shakespeare

Each line is {"prompt": ..., "answer": ...} or {"messages": [{"role": ..., "content": ...}, ...]}; the loss covers
answers (assistant turns) and their EOS. The model shape must be the checkpoint's: these are the Tiny Shakespeare
model's, whose max_len 64 bounds prompt + answer (data.seq_len is the packed row length).
"""
import ml_collections

from configs import base


def get_config():
  c = base.get_config()
  c.objective = o = ml_collections.ConfigDict()
  o.name = "sft"
  o.train_files = ""  # a .jsonl file, a directory of them, or a glob (used when objective.task is "")
  o.eval_files = ""  # optional held-out JSONL: answer loss / bits per byte at every eval (sft_loss, ...)
  o.task = ""  # instead of files: generate training data from lm/tasks/<task>.py (its train split)
  o.task_options = ml_collections.ConfigDict()  # the task's make(**options), e.g. digits=3
  o.train_examples = 100000  # generated task examples (packed once, reshuffled every epoch)
  o.system = ""  # optional system prompt for every example
  o.overlong = "truncate"  # truncate | drop: examples longer than data.seq_len + 1 tokens (counts are logged)
  o.eval_task = ""  # task scored on its test split at every eval ("": objective.task; none if both empty)
  o.eval_examples = 500  # test problems for greedy exact match
  o.max_new_tokens = 8  # generation budget per answer (prompt + this must fit model.max_len)
  o.pass_n = 16  # samples per problem for pass@k and best-of-n (0: skip them)
  o.pass_k = (1, 4, 16)
  o.pass_prompts = 100  # the first this many test problems get pass_n samples each
  o.temperature = 1.0  # sampling temperature for pass@k / best-of-n
  o.gen_batch = 256  # rows per generation call
  c.checkpoint.init_from = ""  # a pretraining run dir; "" trains from scratch
  c.train.update(steps=1000, lr=3e-4, min_lr=3e-5, warmup_steps=50)
  c.eval.update(every=250, sample_tokens=0)
  c.checkpoint.every = 250
  return c
