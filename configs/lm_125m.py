"""A ~125M-parameter GPT-2-style model (byte vocab, so 18 layers x 768 instead of GPT-2 small's 12) for
accelerator throughput and MFU: python benchmarks/throughput.py --config=configs/lm_125m.py

bf16 compute with float32 params, cuDNN flash attention on GPUs (attention_impl=auto), context 1024, batch 64.
On one H200 (experiments/SPEED_NOTES.md): 45.8% / 45.7% MFU at batch 64 (two runs, 36 GiB peak), 44.2% / 44.3% at
batch 32 (18.8 GiB), so the config takes 64.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(d_model=768, n_layers=18, n_heads=12, max_len=1024, dtype="bfloat16", attention_impl="auto")
  c.data.seq_len = 1024
  c.train.update(batch_size=64, steps=20000, lr=6e-4, min_lr=6e-5, warmup_steps=1000, b2=0.95)
  c.eval.batch_size = 32
  return c
