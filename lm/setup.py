"""What every entry point (train, sample, evaluate, dry run, compress, benchmarks) builds from a config:
the checked config, tokenizer, model, mesh and logical-axis rules, and the model's params (abstract, fresh or
loaded from a checkpoint) in their sharded layout."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import checkpoint as ckpt_lib
from lm import config as config_lib
from lm import heads as heads_lib
from lm import model as model_lib
from lm import sharding
from lm import tokenizer as tokenizer_lib


def strip_boxes(tree):
  """Logical-axis boxes -> plain values, without the sharding constraint nn.unbox applies under a mesh."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


class Setup:

  def __init__(self, config):
    config_lib.validate(config)
    self.config = config
    self.tokenizer = tokenizer_lib.get(config.tokenizer)
    self.model = model_lib.build(config.model)
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.rules(config.mesh)

  def use(self):
    """Context to trace and run under: this mesh and the rules the model's constraints read."""
    return sharding.use(self.mesh, self.rules)

  def _init(self, rng):
    return self.model.init(rng, jnp.zeros((1, min(8, self.config.model.max_len)), jnp.int32))["params"]

  def abstract_params(self, boxed=False, sharded=False):
    """ShapeDtypeStructs of the params (with their shardings if `sharded`; boxed keeps logical names)."""
    abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    if boxed:
      return abstract
    abstract = strip_boxes(abstract)
    return ckpt_lib.abstract(abstract, self.param_shardings()) if sharded else abstract

  def param_shardings(self):
    return sharding.param_shardings(self.abstract_params(boxed=True), self.mesh, self.rules)

  def init_params(self, rng):
    return jax.jit(lambda r: nn.unbox(self._init(r)), out_shardings=self.param_shardings())(rng)

  def load_params(self, path, rng=None, fresh: str = "", drop: str = "", step=None, drop_heads: bool = False,
                  heads: tuple = ()):
    """Params from the newest readable checkpoint under `path` (a run or checkpoint directory), in this model's
    layout. `fresh` globs name params initialised fresh (from `rng`) instead, `drop` globs checkpoint params
    this model may leave unused (checkpoint.init_fresh / init_drop); anything else that differs is an error.
    `heads`: scalar heads (lm/heads.py) to load beside the model, e.g. ("reward_head",)."""
    abstract = {**self.abstract_params(sharded=True),
                **{name: heads_lib.abstract(self.model.cfg.d_model, self.mesh) for name in heads}}
    loaded, fresh = ckpt_lib.load_params(path, abstract, fresh=fresh, drop=drop, step=step, drop_heads=drop_heads)
    if not fresh:
      return loaded
    new = self.init_params(jax.random.PRNGKey(0) if rng is None else rng)
    flat_loaded = {ckpt_lib.path_of(p): x for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
    return jax.tree_util.tree_map_with_path(
        lambda p, x: flat_loaded.get(ckpt_lib.path_of(p), x), new)
