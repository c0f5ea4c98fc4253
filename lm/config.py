"""The config of a training run: its groups, the checks that run before anything compiles, and comparisons.

Each group is declared once, with its defaults, allowed values and ranges, beside the code that reads it:
`model.*` (lm/model.py), `train.*` (lm/optim.py), `data.*` (lm/data/sources.py), `mesh.*` (lm/sharding.py),
`checkpoint.*` (lm/checkpoint.py), `lora.*` (lm/lora.py), `eval.*` (here); `objective.*` by each objective
(lm/objectives/<name>.py), which checks it when the run builds the objective. configs/base.py assembles the defaults.
"""
import dataclasses
import json

from lm import options
from lm.errors import UserError
from lm.options import option


@dataclasses.dataclass(frozen=True)
class EvalConfig(options.Group):
  every: int = option(500, min=1, doc="steps between evaluations (and one at the end)")
  batch_size: int = option(64, min=1)
  max_batches: int = option(0, min=0, doc="0: the whole eval split")
  sample_tokens: int = option(200, min=0, doc="a sample printed after training; 0: none")
  sample_prompt: str = option("\n")


def groups() -> dict:
  from lm import checkpoint, lora, model, optim, sharding
  from lm.data import sources
  return {"model": model.ModelConfig, "data": sources.DataConfig, "train": optim.TrainConfig, "eval": EvalConfig,
          "mesh": sharding.MeshConfig, "checkpoint": checkpoint.CheckpointConfig, "lora": lora.LoraConfig}


# Groups a config may leave out (runs made before they existed): their defaults apply.
OPTIONAL = ("lora",)

# Keys that cannot change a run's results: a workdir resumed with other values of these is the same run.
COSMETIC = ("train.progress", "train.log_every", "eval.every", "eval.batch_size", "eval.max_batches",
            "eval.sample_tokens", "eval.sample_prompt", "checkpoint.every", "checkpoint.keep")


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


def result_diff(old: dict, new: dict) -> list:
  """diff() of two flat configs without the keys that cannot change results, nor a longer train.steps when the
  learning-rate schedule does not depend on it."""
  old, new = dict(old), dict(new)
  defaults = group_defaults()
  for key in [k for k in new if k not in old and new[k] == defaults.get(k, object())]:
    new.pop(key)  # an option added since the old run was made, at its default: the same run
  for key in COSMETIC:
    old.pop(key, None)
    new.pop(key, None)
  steps_free = new.get("train.schedule") == "constant" or new.get("train.decay_steps", 0)
  if steps_free and new.get("train.steps", 0) >= old.get("train.steps", 0):
    old.pop("train.steps", None)
    new.pop("train.steps", None)
  return diff(old, new)


def group_defaults() -> dict:
  """Flat {key: default} of every declared group."""
  return flatten({name: group.config().to_dict() for name, group in groups().items()})


def validate(config):
  """Raise one UserError naming every problem of the run's groups (objective options excepted)."""
  problems = []
  parsed = {}
  for name, group in groups().items():
    if name not in config and name in OPTIONAL:
      continue
    if name not in config:
      problems.append(f"the config has no {name}.* group; start it from configs/base.py")
      continue
    parsed[name], found = group.problems(config[name], name, config)
    problems += found
  for key in ("seed",):
    if not isinstance(config.get(key), int):
      problems.append(f"{key}={config.get(key)!r} must be an int")
  if "model" in parsed and "data" in parsed and parsed["model"] and parsed["data"] and \
      parsed["data"].seq_len > parsed["model"].max_len:
    problems.append(f"data.seq_len={parsed['data'].seq_len} exceeds model.max_len={parsed['model'].max_len}")
  if problems:
    raise UserError(options.format_problems(problems))
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
    raise UserError(options.format_problems(problems, "invalid config for this mesh"))
