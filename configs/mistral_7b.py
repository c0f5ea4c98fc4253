"""Mistral-7B shape (untied embeddings: 7,241,732,096 params), for planning with --dry_run.

XLA_FLAGS=--xla_force_host_platform_device_count=8 python launch.py --config=configs/mistral_7b.py --dry_run \
  --config.mesh.fsdp=8 --config.mesh.data=1
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336, max_len=32768,
                 norm="rmsnorm", mlp="swiglu", position="rope", rope_theta=1e6, tie_embeddings=False,
                 sliding_window=4096, use_bias=False, dtype="bfloat16", param_dtype="float32", remat="full",
                 norm_eps=1e-5)
  c.data.seq_len = 4096
  c.train.update(batch_size=8, lr=3e-4, min_lr=3e-5, warmup_steps=2000, steps=100000, b2=0.95)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.eval.batch_size = 8
  return c
