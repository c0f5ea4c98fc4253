"""What every entry point (train, sample, evaluate, dry run, compress, benchmarks) builds from a config:
the checked config, tokenizer, model, mesh and logical-axis rules, and the model's params (abstract, fresh or
loaded from a checkpoint) in their sharded layout.

With `checkpoint.init_from` a Hugging Face directory, its config.json sets the architecture (`model.*`, see
lm/hf/load.py) before anything else reads the config. With `lora.rank` > 0 the params are {"base", "lora"}
(lm/lora.py), plus "tables" (trainable copies of the embedding, an untied head, a learned position table) with
`lora.train_embeddings`, and `model` is the Transformer that merges them before applying.
"""
import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import checkpoint as ckpt_lib
from lm import config as config_lib
from lm import cpu
from lm import heads as heads_lib
from lm import layer_layout
from lm import lora as lora_lib
from lm import model as model_lib
from lm import sharding
from lm import tokenizer as tokenizer_lib
from lm.errors import UserError
from lm.hf import load as hf_load


def strip_boxes(tree):
  """Logical-axis boxes -> plain values, without the sharding constraint nn.unbox applies under a mesh."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


class Setup:

  def __init__(self, config):
    if config.checkpoint.init_from and hf_load.is_hf_dir(config.checkpoint.init_from):
      config = hf_load.resolve_config(config)
    config_lib.validate(config)
    self.config = config
    self.base_model = model_lib.build(config.model)
    self.lora = lora_lib.LoraConfig.parse(config.get("lora"), "lora", config)
    if self.base_model.cfg.scan_layers and (self.lora.rank or config.checkpoint.init_from and
                                            hf_load.is_hf_dir(config.checkpoint.init_from)):
      raise UserError("LoRA adapters and Hugging Face checkpoints use unrolled layers: set "
                      "--config.model.scan_layers=False")
    self.model = lora_lib.wrap(self.base_model, self.lora)
    self.tokenizer = tokenizer_lib.get(config.tokenizer, config.data)
    tokenizer_lib.check_fits(self.tokenizer, config.tokenizer, self.base_model.cfg.vocab_size)
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.rules(config.mesh)
    self._abstract = {}

  def use(self):
    """Context to trace and run under: this mesh and the rules the model's constraints read."""
    return sharding.use(self.mesh, self.rules)

  def _init_base(self, rng, model=None):
    model = model or self.base_model
    return model.init(rng, jnp.zeros((1, min(8, self.config.model.max_len)), jnp.int32))["params"]

  def _fresh_base(self, rng):
    """Unboxed fresh base params. A scanned model gets its unrolled twin's, stacked: scan_layers never changes a
    run's start (nn.scan would draw each layer's init from split keys instead)."""
    cfg = self.base_model.cfg
    if not cfg.scan_layers:
      return nn.unbox(self._init_base(rng))
    unrolled = model_lib.Transformer(dataclasses.replace(cfg, scan_layers=False))
    return layer_layout.to_layout(nn.unbox(self._init_base(rng, unrolled)), True)

  def _init_adapters(self, rng):
    return lora_lib.init(rng, self.abstract_params(boxed=True, base=True), self.lora, self.base_model.cfg.mlp)

  def _fresh(self, rng):
    base = self._fresh_base(rng)
    if not self.lora.rank:
      return base
    return self._around(base, nn.unbox(self._init_adapters(jax.random.fold_in(rng, 1))))

  def _around(self, base, adapters):
    """A LoRA run's params around its frozen base: the adapters and, with train_embeddings, the base's tables
    to train (they must not share buffers with the base, which the train step passes through: a jit's outputs
    never do, init_from copies)."""
    params = {lora_lib.FROZEN: base, "lora": adapters}
    if self.lora.train_embeddings:
      params[lora_lib.TABLES] = lora_lib.tables(base)
    return params

  def abstract_params(self, boxed=False, sharded=False, base=False):
    """ShapeDtypeStructs of the params (with their shardings if `sharded`; boxed keeps logical names); `base`:
    the model's alone, without LoRA adapters."""
    abstract = self._boxed_abstract(base)
    if boxed:
      return abstract
    abstract = strip_boxes(abstract)
    return ckpt_lib.abstract(abstract, self.param_shardings(base)) if sharded else abstract

  def _boxed_abstract(self, base: bool):
    """Traced once per Setup (the model's init takes ~1.4 s to trace at 8 layers, measured)."""
    key = jax.random.PRNGKey(0)
    if "base" not in self._abstract:
      self._abstract["base"] = jax.eval_shape(self._init_base, key)
    if base or not self.lora.rank:
      return self._abstract["base"]
    if "run" not in self._abstract:
      self._abstract["run"] = self._around(self._abstract["base"], jax.eval_shape(self._init_adapters, key))
    return self._abstract["run"]

  def param_shardings(self, base=False):
    return sharding.param_shardings(self.abstract_params(boxed=True, base=base), self.mesh, self.rules)

  def init_params(self, rng):
    return jax.jit(self._fresh, out_shardings=self.param_shardings(), compiler_options=cpu.init_compiler_options())(rng)

  def load_params(self, path, rng=None, fresh: str = "", drop: str = "", step=None, drop_heads: bool = False,
                  heads: tuple = ()):
    """Params from the newest readable checkpoint under `path` (a run or checkpoint directory) in this run's layout
    (a LoRA run's own checkpoints hold base and adapters). `fresh` globs name params initialised fresh (from
    `rng`) instead, `drop` globs checkpoint params this model may leave unused (checkpoint.init_fresh /
    init_drop); anything else that differs is an error. `heads`: scalar heads (lm/heads.py) to load beside the
    model, e.g. ("reward_head",)."""
    abstract = {**self.abstract_params(sharded=True),
                **{name: heads_lib.abstract(self.base_model.cfg.d_model, self.mesh) for name in heads}}
    loaded, fresh = ckpt_lib.load_params(path, abstract, fresh=fresh, drop=drop, step=step, drop_heads=drop_heads)
    return self._with_fresh(loaded, fresh, rng, self.init_params)

  def init_from(self, path, rng, fresh: str = "", drop: str = ""):
    """A run's starting params from another model: a Hugging Face directory, a run or checkpoint directory, or a
    LoRA run (its adapters and trained tables merged into its base); with lora.rank > 0, under fresh adapters
    (and, with lora.train_embeddings, trainable copies of the loaded tables)."""
    base_init = lambda r: jax.jit(self._fresh_base, out_shardings=self.param_shardings(base=True),
                                  compiler_options=cpu.init_compiler_options())(r)
    abstract = self.abstract_params(sharded=True, base=True)
    if hf_load.is_hf_dir(path):
      loaded, fresh_keys = hf_load.load_params(path, self.base_model.cfg, abstract, fresh=fresh, drop=drop)
    elif _lora_run(path):
      loaded, fresh_keys = self._merged_lora_run(path, abstract), []
    else:
      loaded, fresh_keys = ckpt_lib.load_params(path, abstract, fresh=fresh, drop=drop)
    base = self._with_fresh(loaded, fresh_keys, rng, base_init)
    if not self.lora.rank:
      return base
    adapters = jax.jit(lambda r: nn.unbox(self._init_adapters(r)),
                       out_shardings=self.param_shardings()["lora"])(jax.random.fold_in(rng, 1))
    params = self._around(base, adapters)
    if lora_lib.TABLES in params:  # a copy: the base keeps the original tables for the KL reference
      params[lora_lib.TABLES] = sharding.frozen_copy(params[lora_lib.TABLES])
    return params

  def _merged_lora_run(self, path, abstract):
    from lm import runs
    source, params = runs.load(path)
    merged = jax.jit(lambda p: lora_lib.model_params(p, source.lora.scale))(params)
    diffs = ckpt_lib.differences(ckpt_lib.shapes(merged), ckpt_lib.shapes(abstract))
    if diffs:
      raise UserError(f"LoRA run {path} does not fit this model ({'; '.join(diffs[:4])}); set --config.model.* to "
                      "its model")
    return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), merged, abstract)

  @staticmethod
  def _with_fresh(loaded, fresh: list, rng, init):
    if not fresh:
      return loaded
    new = init(jax.random.PRNGKey(0) if rng is None else rng)
    flat_loaded = {ckpt_lib.path_of(p): x for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
    return jax.tree_util.tree_map_with_path(lambda p, x: flat_loaded.get(ckpt_lib.path_of(p), x), new)


def _lora_run(path: str) -> bool:
  """A run directory whose config trained LoRA adapters."""
  from lm import runs
  if not os.path.exists(os.path.join(path, "config.json")):
    return False
  return bool(runs.load_config(path).get("lora", {}).get("rank", 0))
