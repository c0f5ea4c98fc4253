"""Shared defaults. Every experiment config starts from `get_config()` and overrides what it needs.

Groups: model.*, data.*, train.*, objective.*, eval.*, mesh.*, checkpoint.*; `seed` and `tokenizer` on top.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tokenizer = "byte"

  c.model = m = ml_collections.ConfigDict()
  m.vocab_size = 264  # 256 bytes + 6 specials, padded to a multiple of 8 so it shards evenly
  m.d_model = 128
  m.n_layers = 4
  m.n_heads = 4
  m.n_kv_heads = 0  # 0: same as n_heads
  m.d_ff = 0  # 0: 4 * d_model
  m.max_len = 64
  m.norm = "layernorm"
  m.mlp = "gelu"
  m.position = "learned"
  m.rope_theta = 10000.0
  m.use_bias = False
  m.tie_embeddings = True
  m.sliding_window = 0
  m.dropout = 0.0
  m.norm_eps = 1e-5
  m.dtype = "float32"
  m.param_dtype = "float32"
  m.remat = "none"
  m.attention_impl = "xla"

  c.data = d = ml_collections.ConfigDict()
  d.name = "tiny_shakespeare"  # a TFDS catalog name, or "text_folder" (then data.path)
  d.path = ""  # text_folder: directory of text files
  d.tfds_dir = ""  # "": $LM_TFDS_DIR or ~/tensorflow_datasets
  d.manual_dir = ""  # "": $LM_MANUAL_DIR; folder holding input.txt for offline preparation
  d.seq_len = 64
  d.train_split = "train"
  d.eval_split = "validation"

  c.train = t = ml_collections.ConfigDict()
  t.steps = 2000
  t.batch_size = 12  # global, across all processes and devices
  t.grad_accum = 1
  t.lr = 1e-3
  t.min_lr = 1e-4
  t.warmup_steps = 100
  t.decay_steps = 0  # 0: train.steps
  t.schedule = "cosine"  # cosine | constant
  t.b1 = 0.9
  t.b2 = 0.99
  t.weight_decay = 0.1
  t.grad_clip = 1.0
  t.z_loss = 0.0
  t.nonfinite = "stop"  # stop | skip
  t.log_every = 50
  t.progress = True

  c.objective = o = ml_collections.ConfigDict()
  o.name = "pretrain"

  c.eval = e = ml_collections.ConfigDict()
  e.every = 500
  e.batch_size = 64
  e.max_batches = 0  # 0: the whole eval split
  e.sample_tokens = 200  # printed sample after training; 0: none
  e.sample_prompt = "\n"

  c.mesh = ms = ml_collections.ConfigDict()
  ms.data = -1  # -1: all devices not used by the other axes
  ms.fsdp = 1
  ms.tensor = 1
  ms.num_devices = 0  # 0: every visible device; N: the first N
  # Logical axis -> mesh axes. Params use the plain names, activations the act_* names, so a tensor
  # dimension is never sharded twice over one mesh axis.
  ms.rules = ml_collections.ConfigDict(dict(
      batch=("data", "fsdp"), length=None, pos=None, head_dim=None,
      embed="fsdp", vocab="tensor", heads="tensor", kv_heads="tensor", mlp="tensor",
      act_embed=None, act_vocab="tensor", act_heads="tensor", act_kv_heads="tensor", act_mlp="tensor"))

  c.checkpoint = ck = ml_collections.ConfigDict()
  ck.every = 500
  ck.keep = 3
  ck.init_from = ""  # a run dir or checkpoint dir whose params start this run (fine-tuning)
  return c
