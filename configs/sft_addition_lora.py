"""LoRA fine-tuning on 3-digit addition (configs/sft_addition.py's task and schedule) from a Hugging Face checkpoint:
the Tiny Shakespeare model exported with lm/hf/export.py, loaded back through checkpoint.init_from with its
tokenizer.json and chat template, rank-16 adapters on every matrix plus the token embedding and learned position
tables trained in full (lora.train_embeddings), the base frozen.

python -m lm.hf.export --checkpoint=runs/shakespeare runs/shakespeare_hf
python launch.py --config=configs/sft_addition_lora.py --workdir=runs/sft_addition_lora

The architecture comes from runs/shakespeare_hf/config.json (GPT-2 layout, zero biases); only the adapters and the
two tables train (189,440 params; AdamW moments 1.45 MiB, full fine-tuning's 6.37 MiB). Measured (seed 0, 3000
steps, experiments/HF_NOTES.md): greedy exact match on 500 held-out 3-digit problems 99.8% (full fine-tuning:
98.4%) in 199 s. Both tables matter: the chat template's role tokens, EOS and the digits are (almost) absent from
Shakespeare, so pretraining barely moved their embedding rows (adapters alone: 0.4%), and the fixed-width format
lines digits up by position (adapters + embedding, the position table frozen: 1.6%).
"""
from configs import sft_addition


def get_config():
  c = sft_addition.get_config()
  c.checkpoint.init_from = "runs/shakespeare_hf"
  c.tokenizer = "hf:runs/shakespeare_hf"
  c.lora.update(rank=16, alpha=32.0, targets="all", train_embeddings=True)
  c.train.update(lr=2e-3, min_lr=2e-4)
  return c
