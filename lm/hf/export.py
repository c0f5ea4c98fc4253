"""Export any run's checkpoint as a Hugging Face model directory that transformers loads:

  python -m lm.hf.export --checkpoint=RUN OUT_DIR [--step=N] [--dtype=bfloat16] [--max_shard_mb=N]

RUN is a run directory (launch.py --workdir). OUT_DIR receives config.json, generation_config.json, the weights
as safetensors (sharded with model.safetensors.index.json past --max_shard_mb) and the run's tokenizer
(tokenizer.json or tokenizer.model, tokenizer_config.json with the chat template). LoRA adapters are merged into
the base; value and reward heads are left out. GPT-2-style models become GPT2LMHeadModel (a model without
biases gets zero biases, the same function), RoPE/RMSNorm/SwiGLU ones LlamaForCausalLM, MistralForCausalLM
(sliding window) or Qwen2ForCausalLM (q/k/v biases). The directory is written beside OUT_DIR and renamed
when complete; an existing OUT_DIR is refused.
"""
import argparse
import json
import logging
import os
import shutil
import sys
import tempfile

import jax
import ml_dtypes
import numpy as np

from lm import checkpoint as ckpt_lib
from lm import layer_layout
from lm import lora
from lm.errors import UserError
from lm.hf import convert

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def hf_tensors(params: dict, cfg, kind: str) -> dict:
  """{HF name: numpy array} of model params (a nested dict of arrays, either layer layout) for Hugging Face
  `kind`."""
  params = layer_layout.to_unrolled(params)  # a model.scan_layers run stacks its layers; HF names them one by one
  flat = {ckpt_lib.path_of(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
  out, used = {}, set()
  for g in convert.tensor_groups(cfg, kind):
    present = [o in flat for o in g.ours]
    if not any(present):  # GPT-2 biases of a model without biases
      arrays = [np.zeros(s, np.float32) for s in g.hf_shapes]
    elif all(present):
      arrays = g.to_hf([flat[o] for o in g.ours])
      used.update(g.ours)
    else:
      raise UserError(f"params {', '.join(o for o, p in zip(g.ours, present) if not p)} are missing beside "
                      f"{', '.join(o for o, p in zip(g.ours, present) if p)}")
    out.update({n: np.ascontiguousarray(a) for n, a in zip(g.hf, arrays)})
  unused = sorted(set(flat) - used)
  if unused:
    raise UserError(f"params {', '.join(unused[:4])} have no place in a {kind} checkpoint")
  return out


def write(out_dir: str, tensors: dict, hf_config: dict, tokenizer=None, max_len: int = 0, dtype: str = "float32",
          max_shard_bytes: int = 0, generation: dict | None = None):
  """A Hugging Face model directory at out_dir (which must not exist), written beside it and renamed at the end."""
  from safetensors.numpy import save_file
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise UserError(f"{out_dir} exists; export into a new directory")
  parent = os.path.dirname(out_dir)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.")
  except OSError as e:
    raise UserError(f"cannot write {out_dir}: {e.strerror}") from None
  try:
    tensors = {k: v.astype(DTYPES[dtype]) if v.dtype.kind == "f" else v for k, v in tensors.items()}
    shards = _shards(tensors, max_shard_bytes)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
      save_file({k: tensors[k] for k in shard}, os.path.join(tmp, name), metadata={"format": "pt"})
    if len(shards) > 1:
      index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
               "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
      _json(os.path.join(tmp, "model.safetensors.index.json"), index)
    _json(os.path.join(tmp, "config.json"), {**hf_config, "torch_dtype": dtype})
    if generation:
      _json(os.path.join(tmp, "generation_config.json"), generation)
    if tokenizer is not None:
      from lm.hf import tokenizer as hf_tokenizer
      hf_tokenizer.save(tokenizer, tmp, max_len)
    for name in os.listdir(tmp):  # mkdtemp (and safetensors) create them private; an export is for others to read
      os.chmod(os.path.join(tmp, name), 0o644)
    os.chmod(tmp, 0o755)
    os.rename(tmp, out_dir)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, OSError):
      raise UserError(f"cannot write {out_dir}: {e.strerror or e}") from None
    raise


def _shards(tensors: dict, max_bytes: int) -> list:
  """Tensor names in order, cut into files of at most max_bytes (0: one file; a larger tensor gets its own)."""
  shards, size = [[]], 0
  for k, v in tensors.items():
    if max_bytes and shards[-1] and size + v.nbytes > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(k)
    size += v.nbytes
  return shards


def _json(path: str, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


def export(run_dir: str, out_dir: str, step: int | None = None, dtype: str = "float32",
           max_shard_bytes: int = 0) -> dict:
  """Write run_dir's newest readable checkpoint (or `step`) as a Hugging Face model; returns its config.json."""
  from lm import runs
  setup, params = runs.load(run_dir, step=step)
  cfg, tok = setup.base_model.cfg, setup.tokenizer
  kind = convert.model_type(cfg)
  params = jax.device_get(jax.jit(lambda p: lora.model_params(p, setup.lora.scale))(params))
  ids = {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}
  hf_config = convert.hf_config(cfg, kind, dtype, ids)
  generation = {k + "_token_id": v for k, v in ids.items() if v is not None}
  write(out_dir, hf_tensors(params, cfg, kind), hf_config, tok, cfg.max_len, dtype, max_shard_bytes, generation)
  return hf_config


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m lm.hf.export", description=__doc__.splitlines()[0])
  p.add_argument("output", help="the new Hugging Face model directory")
  p.add_argument("--checkpoint", required=True, help="run directory (launch.py --workdir)")
  p.add_argument("--step", type=int, default=None, help="that checkpoint (default: the newest readable)")
  p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
  p.add_argument("--max_shard_mb", type=float, default=0, help="split the weights into files of this size (0: one)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs restores at INFO and WARNING
  try:
    config = export(args.checkpoint, args.output, args.step, args.dtype, int(args.max_shard_mb * 2**20))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {args.output}: {config['architectures'][0]}, {config['model_type']}")


if __name__ == "__main__":
  main()
