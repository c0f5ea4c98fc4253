"""The `train.*` config group and the optimizer it builds: AdamW (or SGD, or Muon for the transformer blocks'
matrices with AdamW for the rest) with warm-up and a cosine or constant schedule."""
import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

from lm import layer_layout
from lm import options
from lm.options import option


@dataclasses.dataclass(frozen=True)
class TrainConfig(options.Group):
  steps: int = option(2000, min=0)
  optimizer: str = option("adamw", choices=("adamw", "sgd", "muon"),
                          doc="sgd: plain steps (no moments), e.g. for ES; muon: Muon for the blocks' matrices, "
                          "AdamW (train.lr, b1, b2, weight_decay) for embeddings, head, norms and biases")
  batch_size: int = option(12, min=1, doc="global rows per step, across all processes and devices")
  grad_accum: int = option(1, min=1, doc="micro-batches per step (the batch's rows split evenly)")
  lr: float = option(1e-3, min=0.0)
  min_lr: float = option(1e-4, min=0.0)
  warmup_steps: int = option(100, min=0)
  decay_steps: int = option(0, min=0, doc="0: train.steps")
  schedule: str = option("cosine", choices=("cosine", "constant"))
  b1: float = option(0.9, min=0.0, max=1.0)
  b2: float = option(0.99, min=0.0, max=1.0)
  weight_decay: float = option(0.1, min=0.0)
  muon_lr: float = option(0.02, min=0.0, doc="Muon's peak learning rate (same warm-up and schedule as train.lr)")
  muon_momentum: float = option(0.95, min=0.0, max=1.0, doc="Muon's (Nesterov) momentum")
  muon_ns_steps: int = option(5, min=1, doc="Newton-Schulz iterations that orthogonalise Muon's update")
  muon_weight_decay: float = option(0.0, min=0.0, doc="decoupled decay of Muon's matrices, times muon_lr")
  grad_clip: float = option(1.0, min=0.0, doc="global-norm clip; 0: none")
  z_loss: float = option(0.0, min=0.0)
  nonfinite: str = option("stop", choices=("stop", "skip"), doc="a non-finite loss/gradient: stop, or skip the update")
  log_every: int = option(50, min=1)
  progress: bool = option(True, doc="a progress bar on stderr")

  def check(self, config) -> list:
    if self.batch_size % self.grad_accum:
      return [f"train.batch_size={self.batch_size} must be divisible by train.grad_accum={self.grad_accum}"]
    return []

  @property
  def schedule_depends_on_steps(self) -> bool:
    return self.schedule == "cosine" and not self.decay_steps


def make_optimizer(t):
  """(optax optimizer, lr schedule) from the train group (a ConfigDict or TrainConfig)."""
  decay_steps = t.decay_steps or t.steps
  if t.schedule == "constant":
    schedule = optax.join_schedules([optax.linear_schedule(0.0, t.lr, t.warmup_steps), optax.constant_schedule(t.lr)],
                                    [t.warmup_steps])
  else:
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.lr, t.warmup_steps, max(decay_steps, t.warmup_steps + 1),
                                                  end_value=t.min_lr)
  # Decay matrices only: norms, biases (and other vectors) are left alone, as in nanoGPT and most LLM recipes.
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(layer_layout.is_matrix, params)
  adamw = optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask)
  kind = getattr(t, "optimizer", "adamw")
  if kind == "sgd":
    update = optax.chain(optax.add_decayed_weights(t.weight_decay, mask=decay_mask) if t.weight_decay
                         else optax.identity(), optax.sgd(schedule))
  elif kind == "muon":
    ratio = t.muon_lr / t.lr if t.lr else 0.0  # Muon's rate follows train.lr's warm-up and decay
    muon_schedule = lambda step: schedule(step) * ratio
    update = optax.partition({"muon": muon(muon_schedule, t.muon_momentum, t.muon_ns_steps, t.muon_weight_decay),
                              "adamw": adamw}, muon_labels)
  else:
    update = adamw
  optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip) if t.grad_clip else optax.identity(), update)
  return optimizer, schedule


# ---- Muon (Keller Jordan's modded-nanogpt): momentum, orthogonalised by Newton-Schulz, for hidden matrices ----

_BLOCK = re.compile(r"layer_\d+$")


def muon_labels(params):
  """"muon" for matrices inside the transformer blocks (layer_<i>/..., or the scanned layers/...), "adamw" for the
  rest: embeddings, the head and any objective's heads (their rows are looked up or read out one by one, not a
  hidden linear map, which is what Muon's spectral-norm steepest descent is for), norms and biases (vectors)."""
  def label(path, x):
    in_block = any(_BLOCK.match(str(getattr(k, "key", ""))) for k in path) or layer_layout.layer_axes(path)
    return "muon" if in_block and layer_layout.is_matrix(path, x) else "adamw"
  return jax.tree_util.tree_map_with_path(label, params)


def muon_dims(path, x) -> contrib.MuonDimensionNumbers:
  """Which axes of a block matrix are its input (reduction) and output, so Muon orthogonalises the 2-D matrix
  the forward pass multiplies by (lm/model.py reshapes each kernel to one): q/k/v kernels (d, heads, head_dim)
  -> (d, heads * head_dim); the output projection (heads, head_dim, d) -> (heads * head_dim, d); MLP kernels are
  already (in, out). Orthogonalising each head's slice instead would give a stacked update whose spectral norm
  is up to sqrt(heads): not the steepest-descent step for the layer's actual linear map. A scanned kernel's leading
  layer axis is left out of both, so optax orthogonalises each layer's matrix on its own (a batch axis)."""
  lead = layer_layout.layer_axes(path)
  if x.ndim - lead == 2:
    return contrib.MuonDimensionNumbers(lead, lead + 1)
  if [str(getattr(k, "key", "")) for k in path[-2:]] == ["attn", "o"]:
    return contrib.MuonDimensionNumbers(tuple(range(lead, x.ndim - 1)), x.ndim - 1)
  return contrib.MuonDimensionNumbers(lead, tuple(range(lead + 1, x.ndim)))


def _axes(a) -> tuple:
  """A MuonDimensionNumbers field (one axis or several) as a tuple."""
  return (a,) if isinstance(a, int) else tuple(a)


def _width_scale(x, dims: contrib.MuonDimensionNumbers):
  """sqrt(max(1, fan_out / fan_in)): Keller Jordan's scale that keeps the update's per-entry size width-free."""
  size = lambda axes: math.prod(x.shape[a] for a in _axes(axes))
  return x * max(1.0, size(dims.output_axis) / size(dims.reduction_axis)) ** 0.5


NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, as optax's


def newton_schulz(x, steps: int, eps: float = 1e-8):
  """Orthogonalise each matrix of x [batch, m, n]: Frobenius-normalise, then `steps` quintic iterations
  X <- aX + (bA + cA^2) X with A = X X^T, optax's arithmetic. A tall matrix iterates on A = X^T X and multiplies
  from the right, the same map transposed: optax transposes it instead, and XLA:CPU copied every such transpose
  (116 copies per step of configs/speedrun_shakespeare.py; this form is 8-15% faster per step there, measured)."""
  a, b, c = NS_COEFFS
  x = x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)) + eps)
  tall = x.shape[-2] > x.shape[-1]
  for _ in range(steps):
    if tall:
      g = jnp.einsum("...ki,...kj->...ij", x, x)
      x = a * x + x @ (b * g + c * (g @ g))
    else:
      g = jnp.einsum("...ik,...jk->...ij", x, x)
      x = a * x + (b * g + c * (g @ g)) @ x
  return x


def _orthogonalise(x, dims: contrib.MuonDimensionNumbers, steps: int):
  """newton_schulz on the [batch, reduction, output] matrices that `dims` names, back in x's layout."""
  red, out = _axes(dims.reduction_axis), _axes(dims.output_axis)
  batch = [a for a in range(x.ndim) if a not in red + out]
  perm = batch + list(red + out)
  size = lambda ax: math.prod(x.shape[a] for a in ax)
  y = x.transpose(perm).reshape(size(batch), size(red), size(out))
  return newton_schulz(y, steps).reshape([x.shape[a] for a in perm]).transpose(np.argsort(perm))


def scale_by_muon(momentum: float, ns_steps: int):
  """optax.contrib.scale_by_muon(nesterov=True) on the matrices muon_dims names, with newton_schulz above. Same
  state (contrib.MuonState), so Muon checkpoints from before carry over."""

  def init(params):
    return contrib.MuonState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                             ns_coeffs=jnp.asarray(NS_COEFFS))

  def update(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, momentum, 1)
    count = optax.safe_increment(state.count)
    nesterov = jax.tree.map(lambda m, g: momentum * m + (1 - momentum) * g,
                            optax.tree.bias_correction(mu, momentum, optax.safe_increment(count)),
                            optax.tree.bias_correction(updates, momentum, count))
    ortho = jax.tree_util.tree_map_with_path(lambda p, x: _orthogonalise(x, muon_dims(p, x), ns_steps), nesterov)
    return ortho, contrib.MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)

  return optax.GradientTransformation(init, update)


def muon(learning_rate, momentum: float = 0.95, ns_steps: int = 5, weight_decay: float = 0.0):
  """Muon for a tree of block matrices: Nesterov momentum -> Newton-Schulz orthogonalisation (optax's quintic,
  coefficients NS_COEFFS, on the matrix muon_dims names) -> width scale -> decay -> -lr."""
  dims = lambda tree: jax.tree_util.tree_map_with_path(muon_dims, tree)

  def scale(updates, state, params=None):
    del params
    return jax.tree.map(_width_scale, updates, dims(updates)), state

  return optax.chain(
      scale_by_muon(momentum, ns_steps),
      optax.GradientTransformation(lambda _: optax.EmptyState(), scale),
      optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
      optax.scale_by_learning_rate(learning_rate))
