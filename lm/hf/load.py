"""Import a Hugging Face model directory (config.json + *.safetensors, sharded with an index or not).

`resolve_config` takes the architecture from config.json into the run's `model.*` options; `load_params` reads
the weights tensor by tensor (safetensors memory-maps each file; no torch), converts each to our layout
(lm/hf/convert.py) and places it straight into its sharding, so the host holds about one tensor at a time and
a model larger than one device's memory loads over the mesh.
"""
import fnmatch
import glob
import json
import os

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors can read bf16 checkpoints)
import numpy as np

from lm import model as model_lib
from lm.errors import UserError
from lm.hf import convert

INDEX = "model.safetensors.index.json"


def is_hf_dir(path: str) -> bool:
  """A directory whose config.json names a model_type (a run directory's config.json has none)."""
  try:
    with open(os.path.join(path, "config.json")) as f:
      return "model_type" in json.load(f)
  except (OSError, ValueError):
    return False


def read_config(path: str) -> dict:
  file = os.path.join(path, "config.json")
  try:
    with open(file) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {file}: {e}") from None


def resolve_config(config):
  """The run config with the architecture of checkpoint.init_from (a Hugging Face dir) in `model.*`.

  Options the run set to something else than their default and than the checkpoint's are an error (one line
  naming them); for a RoPE model a run's own max_len wins (it bounds the KV cache, not a table).
  """
  path = config.checkpoint.init_from
  hf = read_config(path)
  arch = convert.model_options(hf, os.path.join(path, "config.json"))
  defaults = model_lib.ModelConfig.config()
  if arch["position"] == "rope" and config.model.max_len != defaults.max_len:
    arch["max_len"] = config.model.max_len
  resolved = {"n_kv_heads": lambda v: v or config.model.n_heads, "d_ff": lambda v: v or 4 * config.model.d_model}
  conflicts = [f"model.{k}={config.model[k]!r} (checkpoint: {arch[k]!r})" for k in convert.ARCH_KEYS
               if config.model[k] != defaults[k] and resolved.get(k, lambda v: v)(config.model[k]) != arch[k]]
  if conflicts:
    raise UserError(f"checkpoint.init_from={path!r} is a Hugging Face model whose config.json sets the architecture; "
                    f"these overrides contradict it: {', '.join(conflicts)}; remove them")
  has_tokenizer = any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model"))
  if has_tokenizer and config.tokenizer == "byte" and arch["vocab_size"] != defaults.vocab_size:
    raise UserError(f"checkpoint.init_from={path!r} has its own tokenizer ({arch['vocab_size']} tokens); set "
                    f"--config.tokenizer=hf:{path} (the byte tokenizer's ids mean nothing to this model)")
  config = config.copy_and_resolve_references()
  config.model.update(arch)
  return config


def weight_files(path: str) -> dict:
  """{tensor name: file} from model.safetensors.index.json, or from every *.safetensors in the directory."""
  index = os.path.join(path, INDEX)
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"cannot read {index}: {e}") from None
    missing = sorted({f for f in weight_map.values() if not os.path.exists(os.path.join(path, f))})
    if missing:
      raise UserError(f"{index} names {', '.join(missing)}, missing from {path}; copy the whole checkpoint")
    return {name: os.path.join(path, f) for name, f in weight_map.items()}
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    other = [os.path.basename(p) for ext in ("*.bin", "*.pt") for p in glob.glob(os.path.join(path, ext))]
    raise UserError(f"{path} holds no *.safetensors weights" + (
        f" ({', '.join(other)} are PyTorch pickles, which are not read: save the model with "
        "save_pretrained(safe_serialization=True))" if other else ""))
  from safetensors import safe_open
  out = {}
  for file in files:
    with safe_open(file, framework="numpy") as f:
      out.update({name: file for name in f.keys()})
  return out


class _Reader:
  """Tensors by name from their files, each file opened (memory-mapped) once."""

  def __init__(self, files: dict):
    self.files, self.open = files, {}

  def shape(self, name):
    return tuple(self._file(name).get_slice(name).get_shape())

  def get(self, name) -> np.ndarray:
    return self._file(name).get_tensor(name)

  def _file(self, name):
    from safetensors import safe_open
    file = self.files[name]
    if file not in self.open:
      try:
        self.open[file] = safe_open(file, framework="numpy")
      except Exception as e:  # pylint: disable=broad-except  (truncated or not a safetensors file)
        raise UserError(f"cannot read {file}: {e}") from None
    return self.open[file]


def _globs(spec: str) -> list:
  return [p.strip() for p in (spec or "").split(",") if p.strip()]


def load_params(path: str, cfg, abstract: dict, fresh: str = "", drop: str = "") -> tuple:
  """(params, fresh paths): the weights of the Hugging Face dir `path` in the layout and shardings of `abstract`
  (ShapeDtypeStructs with shardings, our param tree), converted one tensor at a time.

  Every param must come from the checkpoint, with its config.json's shape, and every tensor of the checkpoint
  must be used, except params matching `fresh` globs (left out, for the caller to initialise) and tensors
  matching `drop` globs (ignored); anything else is one error naming the tensors.
  """
  from lm import checkpoint as ckpt_lib
  kind = read_config(path)["model_type"]
  files = {convert.canonical(k, kind): v for k, v in weight_files(path).items()}
  reader = _Reader(files)
  wanted = {ckpt_lib.path_of(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
  fresh_keys = {k for k in wanted if any(fnmatch.fnmatchcase(k, g) for g in _globs(fresh))}
  dropped = lambda name: convert.is_buffer(name) or any(fnmatch.fnmatchcase(name, g) for g in _globs(drop))
  groups = [g for g in convert.tensor_groups(cfg, kind) if any(o in wanted and o not in fresh_keys for o in g.ours)]
  covered = {o for g in convert.tensor_groups(cfg, kind) for o in g.ours}
  used = {n for g in groups for n in g.hf}
  if cfg.tie_embeddings:  # some files store the tied output matrix too
    used.add("lm_head.weight")
  problems = [f"{k} has no tensor in a {kind} checkpoint" for k in sorted(set(wanted) - covered - fresh_keys)]
  problems += [f"tensor {n} is missing" for g in groups for n in g.hf if n not in files]
  problems += [f"tensor {n} has shape {reader.shape(n)}, config.json implies {s}" for g in groups
               for n, s in zip(g.hf, g.hf_shapes) if n in files and reader.shape(n) != tuple(s)]
  problems += [f"tensor {n} is not used by this model" for n in sorted(files) if n not in used and not dropped(n)]
  if problems:
    shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
    raise UserError(f"Hugging Face checkpoint {path} does not fit its config.json ({shown}); list params to "
                    "initialise fresh in checkpoint.init_fresh (and unused tensors in checkpoint.init_drop)")
  flat = {}
  for g in groups:
    arrays = g.to_ours([reader.get(n) for n in g.hf])
    for o, x in zip(g.ours, arrays):
      if o in wanted and o not in fresh_keys:
        flat[o] = _place(np.ascontiguousarray(x, dtype=wanted[o].dtype), wanted[o])
  return _unflatten(flat), sorted(fresh_keys)


def _place(x: np.ndarray, like) -> jax.Array:
  """x on the devices of `like`'s sharding; each device (on any host) copies only its own slice."""
  return jax.make_array_from_callback(x.shape, like.sharding, lambda idx: x[idx])


def _unflatten(flat: dict) -> dict:
  out = {}
  for path, x in flat.items():
    *parents, leaf = path.split("/")
    node = out
    for k in parents:
      node = node.setdefault(k, {})
    node[leaf] = x
  return out
