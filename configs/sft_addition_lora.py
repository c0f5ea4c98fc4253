"""LoRA fine-tuning on 3-digit addition (configs/sft_addition.py's task and schedule) from a Hugging Face checkpoint:
the Tiny Shakespeare model exported with lm/hf/export.py, loaded back through checkpoint.init_from with its
tokenizer.json and chat template, rank-16 adapters on every matrix, the base frozen.

python -m lm.hf.export --checkpoint=runs/shakespeare runs/shakespeare_hf
python launch.py --config=configs/sft_addition_lora.py --workdir=runs/sft_addition_lora

The architecture comes from runs/shakespeare_hf/config.json (GPT-2 layout, zero biases); only the adapters and
their AdamW moments train. Adapters usually want a larger learning rate than full fine-tuning (1e-3 there).
"""
from configs import sft_addition


def get_config():
  c = sft_addition.get_config()
  c.checkpoint.init_from = "runs/shakespeare_hf"
  c.tokenizer = "hf:runs/shakespeare_hf"
  c.lora.update(rank=16, alpha=32.0, targets="all")
  c.train.update(lr=2e-3, min_lr=2e-4)
  return c
