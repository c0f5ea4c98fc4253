"""LoRA: low-rank adapters as a transform of the params, not a fork of the model.

With `lora.rank` r > 0 a run's params are {"base": the model's params, frozen, "lora": adapters, ...heads}. An
adapted matrix W (a q/k/v/o kernel or an MLP kernel) is used as

    W' = W + (alpha / r) * A @ B        A: [in..., r] (random), B: [r, out...] (zero at the start)

merged just before `model.apply` (`LoraModel`), so every objective, the sampler and evaluation run unchanged,
and B = 0 is the base model exactly. The train step differentiates and updates only what `split` calls
trainable (the adapters and any heads), so the base has no gradient and no optimizer moments. Policy
gradient's frozen reference is `without_adapters(params)`: the base the adapters sit on, not a second copy.

With `lora.train_embeddings` (PEFT's modules_to_save) the token embedding table, an untied `lm_head` and a
learned position table also train in full: params["tables"] holds copies of them, initialised from the base's,
that replace the base's when merged. The base keeps the originals, so the reference is still the model the run
started from; the price is one extra copy of each table in memory (the reference needs the original, the policy
the trained one).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import options
from lm.options import option

# Adaptable matrices: their place in a layer and how many leading axes of the kernel are its input side
# (q/k/v: (embed | heads, head_dim); o: (heads, head_dim | embed); MLP kernels: (in | out)).
TARGETS = {"q": ("attn/q", 1), "k": ("attn/k", 1), "v": ("attn/v", 1), "o": ("attn/o", 2),
           "gate": ("mlp/gate/kernel", 1), "up": ("mlp/up/kernel", 1), "down": ("mlp/down/kernel", 1)}
GROUPS = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down"), "all": tuple(TARGETS)}
FROZEN = "base"
TABLES = "tables"
# The token embedding, an untied output head (absent when tied) and the learned position table (absent with RoPE).
TABLE_NAMES = ("embed", "lm_head", "pos_embed")


@dataclasses.dataclass(frozen=True)
class LoraConfig(options.Group):
  """The `lora.*` config group."""
  rank: int = option(0, min=0, doc="0: off (every param trains); r: rank-r adapters, only they (and heads) train")
  alpha: float = option(16.0, above=0.0, doc="the adapters' scale is alpha / rank")
  targets: str = option("attention", doc="comma-separated q, k, v, o, gate, up, down, or the groups attention, "
                                         "mlp, all")
  train_embeddings: bool = option(False, doc="also train the token embedding (an untied lm_head, a learned "
                                             "position table) in full, like PEFT's modules_to_save: for tokens "
                                             "the base never learned (rank 0 trains everything anyway)")

  def check(self, config) -> list:
    parts = [p.strip() for p in self.targets.split(",") if p.strip()]
    bad = [p for p in parts if p not in TARGETS and p not in GROUPS]
    if bad or not parts:
      return [f"lora.targets={self.targets!r}: use {', '.join(TARGETS)} or {', '.join(GROUPS)}"]
    if "gate" in parts and config is not None and config.model.mlp != "swiglu":
      return ["lora.targets names 'gate' but model.mlp is not swiglu (it has no gate); leave it out"]
    return []

  def names(self, mlp: str = "swiglu") -> tuple:
    """The adapted matrices, in TARGETS order ('gate' only for a swiglu MLP)."""
    parts = {p.strip() for p in self.targets.split(",")}
    chosen = {n for p in parts for n in GROUPS.get(p, (p,))}
    return tuple(n for n in TARGETS if n in chosen and (n != "gate" or mlp == "swiglu"))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank if self.rank else 0.0


def _get(tree, path: str):
  for k in path.split("/"):
    tree = tree[k]
  return tree


def init(rng, base, cfg: LoraConfig, mlp: str = "swiglu") -> dict:
  """Adapters for the (boxed or plain, concrete or abstract) base params: A ~ N(0, 1/in) like PEFT's default,
  B = 0. Each factor keeps the logical axis names of its side of the kernel, the rank axis unsharded, so
  adapters shard like their matrices."""
  layers = sorted((k for k in base if k.startswith("layer_")), key=lambda k: int(k.split("_")[1]))
  places = [(layer, name, _get(base[layer], TARGETS[name][0])) for layer in layers for name in cfg.names(mlp)]
  a_shapes = [(*_shape(w)[:TARGETS[name][1]], cfg.rank) for _, name, w in places]
  # One draw cut into every A: one random op to compile rather than one per matrix (measured: 10 s of compile
  # for 8 layers x 4 targets on 2 CPU cores).
  noise = jax.random.normal(rng, (sum(int(np.prod(s)) for s in a_shapes),), jnp.float32)
  out, start = {}, 0
  for (layer, name, w), a_shape in zip(places, a_shapes):
    n_in, size = TARGETS[name][1], int(np.prod(a_shape))
    a = (noise[start:start + size].reshape(a_shape) / np.sqrt(np.prod(a_shape[:-1]))).astype(_dtype(w))
    b = jnp.zeros((cfg.rank, *_shape(w)[n_in:]), _dtype(w))
    start += size
    if isinstance(w, nn.LogicallyPartitioned):
      a = nn.LogicallyPartitioned(a, (*w.names[:n_in], None))
      b = nn.LogicallyPartitioned(b, (None, *w.names[n_in:]))
    out.setdefault(layer, {})[name] = {"a": a, "b": b}
  return out


def _shape(w):
  return (w.value if isinstance(w, nn.LogicallyPartitioned) else w).shape


def _dtype(w):
  return (w.value if isinstance(w, nn.LogicallyPartitioned) else w).dtype


def tables(base: dict) -> dict:
  """The base's embedding, untied head and position table: what `train_embeddings` trains (a copy of) beside the
  adapters."""
  return {k: base[k] for k in TABLE_NAMES if k in base}


def merge(base: dict, adapters: dict, scale: float) -> dict:
  """The base params with every adapted matrix replaced by W + scale * A @ B (in W's dtype)."""
  out = jax.tree.map(lambda x: x, base)  # a fresh dict tree: the caller's params stay as they are
  for layer, targets in adapters.items():
    for name, ab in targets.items():
      *parents, leaf = f"{layer}/{TARGETS[name][0]}".split("/")
      node = out
      for k in parents:
        node = node[k]
      w = node[leaf]
      delta = jnp.tensordot(ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32), axes=1)
      node[leaf] = (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
  return out


def has_adapters(params) -> bool:
  return isinstance(params, dict) and FROZEN in params


def model_params(params, scale: float):
  """Run params -> what the Transformer applies: the base with its adapters merged and its tables replaced by
  the trained ones, heads passed through."""
  if not has_adapters(params):
    return params
  rest = {k: v for k, v in params.items() if k not in (FROZEN, "lora", TABLES)}
  base = merge(params[FROZEN], params["lora"], scale) if "lora" in params else params[FROZEN]
  return {**base, **params.get(TABLES, {}), **rest}


def without_adapters(params):
  """The frozen model under the adapters and trained tables (policy gradient's KL reference): the same base
  buffers, no copy."""
  if not has_adapters(params):
    return params
  return {k: v for k, v in params.items() if k not in ("lora", TABLES)}


def split(params) -> tuple:
  """(trainable, frozen): without adapters everything trains and frozen is None."""
  if not has_adapters(params):
    return params, None
  return {k: v for k, v in params.items() if k != FROZEN}, params[FROZEN]


def join(trainable, frozen):
  return trainable if frozen is None else {**trainable, FROZEN: frozen}


@dataclasses.dataclass(frozen=True)
class LoraModel:
  """The Transformer applied to run params with adapters: `apply` merges them first. Hashable, so it is a static
  argument of jitted functions like the model itself."""
  model: nn.Module
  scale: float

  @property
  def cfg(self):
    return self.model.cfg

  def apply(self, variables, *args, **kwargs):
    return self.model.apply({**variables, "params": model_params(variables["params"], self.scale)}, *args, **kwargs)


def merged(model, params):
  """(plain model, merged params): for a loop that applies the model many times with the same params (the decode
  loop: once per token), merge the adapters once outside it instead of on every call."""
  if isinstance(model, LoraModel):
    return model.model, model_params(params, model.scale)
  return model, params


def wrap(model, lora_cfg: LoraConfig):
  return LoraModel(model, lora_cfg.scale) if lora_cfg.rank else model
