"""LoRA fine-tuning on 3-digit addition (configs/sft_addition.py's task and schedule) from a Hugging Face checkpoint:
the Tiny Shakespeare model exported with lm/hf/export.py, loaded back through checkpoint.init_from with its
tokenizer.json and chat template, rank-16 adapters on every matrix, the base frozen.

python -m lm.hf.export --checkpoint=runs/shakespeare runs/shakespeare_hf
python launch.py --config=configs/sft_addition_lora.py --workdir=runs/sft_addition_lora

The architecture comes from runs/shakespeare_hf/config.json (GPT-2 layout, zero biases); only the adapters and
their AdamW moments train (147,456 params). Measured (experiments/HF_NOTES.md): this does NOT learn the task,
0.4% greedy exact match on 500 held-out 3-digit problems after 3000 steps (full fine-tuning: 98.4%), at lr 2e-3,
5e-4 or without weight decay alike. The chat template's role tokens, EOS and the digits are (almost) absent from
Shakespeare, so pretraining barely moved their rows of the tied embedding table (norms 1.5-1.6, letters 0.74);
adapters cannot change those rows, and with the table trainable beside the adapters one batch fits as fast as
with full fine-tuning (experiments/lora_overfit.py).
"""
from configs import sft_addition


def get_config():
  c = sft_addition.get_config()
  c.checkpoint.init_from = "runs/shakespeare_hf"
  c.tokenizer = "hf:runs/shakespeare_hf"
  c.lora.update(rank=16, alpha=32.0, targets="all")
  c.train.update(lr=2e-3, min_lr=2e-4)
  return c
