"""Supervised fine-tuning on local JSONL files, from a pretraining run or from scratch:

python launch.py --config=configs/sft_jsonl.py --workdir=runs/sft --config.objective.train_files=data/train.jsonl \
  --config.checkpoint.init_from=runs/shakespeare

Each line is {"prompt": ..., "answer": ...} or {"messages": [{"role": ..., "content": ...}, ...]}; the loss covers
answers (assistant turns) and their EOS. The model shape must be the checkpoint's: these are the Tiny Shakespeare
model's, whose max_len 64 bounds prompt + answer (data.seq_len is the packed row length).
Every objective.* option, its default and meaning: lm/objectives/sft.py (Options).
"""
from configs import base
from lm import objectives


def get_config():
  c = base.get_config()
  c.objective = objectives.config("sft")
  c.checkpoint.init_from = ""  # a pretraining run dir; "" trains from scratch
  c.train.update(steps=1000, lr=3e-4, min_lr=3e-5, warmup_steps=50)
  c.eval.update(every=250, sample_tokens=0)
  c.checkpoint.every = 250
  return c
