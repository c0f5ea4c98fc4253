"""Config checks that run before anything compiles, and helpers to compare configs."""
import json

from lm.errors import UserError

CHOICES = {
    "model.norm": ("layernorm", "rmsnorm"), "model.mlp": ("gelu", "swiglu"), "model.position": ("learned", "rope"),
    "model.dtype": ("float32", "bfloat16", "float16"), "model.param_dtype": ("float32", "bfloat16", "float16"),
    "model.remat": ("none", "full", "dots", "dots_no_batch"), "model.attention_impl": ("xla", "cudnn", "auto"),
    "train.schedule": ("cosine", "constant"), "train.nonfinite": ("stop", "skip"),
}
POSITIVE = ("model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads", "model.max_len", "data.seq_len",
            "train.batch_size", "train.grad_accum", "eval.batch_size", "eval.every", "checkpoint.every",
            "checkpoint.keep", "train.log_every")
NON_NEGATIVE = ("train.steps", "train.lr", "train.min_lr", "train.warmup_steps", "train.weight_decay",
                "train.grad_clip", "train.z_loss", "model.dropout", "model.sliding_window", "model.n_kv_heads",
                "model.d_ff", "eval.max_batches", "eval.sample_tokens")


def flatten(d, prefix="") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def to_flat(config) -> dict:
  return flatten(json.loads(json.dumps(config.to_dict(), default=str)))


def override(config, overrides: dict):
  """Set dotted keys, e.g. {"model.d_model": 64}, as --config.model.d_model=64 would; returns config."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return config


def diff(old: dict, new: dict) -> list:
  keys = sorted(set(old) | set(new))
  return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]


def validate(config):
  """Raise UserError listing every problem found (one per line)."""
  flat = to_flat(config)
  problems = []
  for key, choices in CHOICES.items():
    if key in flat and flat[key] not in choices:
      problems.append(f"{key}={flat[key]!r} must be one of {', '.join(choices)}")
  for key in POSITIVE:
    if key in flat and not (isinstance(flat[key], (int, float)) and flat[key] > 0):
      problems.append(f"{key}={flat[key]!r} must be > 0")
  for key in NON_NEGATIVE:
    if key in flat and not (isinstance(flat[key], (int, float)) and flat[key] >= 0):
      problems.append(f"{key}={flat[key]!r} must be >= 0")
  m = config.model
  if m.n_heads > 0 and m.d_model % m.n_heads:
    problems.append(f"model.d_model={m.d_model} must be divisible by model.n_heads={m.n_heads}")
  kv = m.n_kv_heads or m.n_heads
  if kv > 0 and m.n_heads % kv:
    problems.append(f"model.n_heads={m.n_heads} must be a multiple of model.n_kv_heads={kv}")
  if m.position == "rope" and m.n_heads > 0 and (m.d_model // m.n_heads) % 2:
    problems.append(f"rope needs an even head dim, got d_model/n_heads = {m.d_model // m.n_heads}")
  if "seq_len" in config.data and config.data.seq_len > m.max_len:
    problems.append(f"data.seq_len={config.data.seq_len} exceeds model.max_len={m.max_len}")
  t = config.train
  if t.batch_size > 0 and t.grad_accum > 0 and t.batch_size % t.grad_accum:
    problems.append(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
  if not 0 <= m.dropout < 1:
    problems.append(f"model.dropout={m.dropout} must be in [0, 1)")
  if problems:
    raise UserError("invalid config: " + "\n  ".join(problems) if len(problems) > 1 else
                    f"invalid config: {problems[0]}")
  _validate_mesh(config)


def _validate_mesh(config):
  """Divisibility of heads, vocab, width and batch by the mesh axes their rules shard them over."""
  from lm import sharding
  shape = dict(zip(sharding.AXES, sharding.mesh_shape(config.mesh, len(sharding.mesh_devices(config.mesh)))))
  rules = dict(sharding.rules(config.mesh))
  m = config.model
  sizes = {"heads": m.n_heads, "kv_heads": m.n_kv_heads or m.n_heads, "vocab": m.vocab_size, "embed": m.d_model,
           "mlp": m.d_ff or 4 * m.d_model}
  problems = []
  for name, size in sizes.items():
    axes = rules.get(name)
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    n = 1
    for a in axes:
      n *= shape[a]
    if size % n:
      problems.append(f"model {name} ({size}) is sharded over mesh {'x'.join(axes)} = {n} and must divide by it")
  per = shape["data"] * shape["fsdp"]
  for key in ("train.batch_size", "eval.batch_size"):
    group, field = key.split(".")
    rows = config[group][field] // (config.train.grad_accum if key == "train.batch_size" else 1)
    if rows % per:
      problems.append(f"{key}={config[group][field]} (per micro-batch {rows}) must divide by mesh data*fsdp = {per}")
  if problems:
    raise UserError("invalid config for this mesh: " + "; ".join(problems))
