"""Learning while coding (dynamic evaluation; Krause et al. 2018, Bellard's NNCP): after each coded block, the
encoder and the decoder both take the same optimiser step(s) on the bytes just coded, so the model adapts to
the file and nothing extra is stored.

Bit-reproducibility. The decoder must compute every update bit for bit as the encoder did, so:
- one jitted function (`Updater.update`) makes every update, with fixed shapes (every block is a
  [rows, window] array, shorter blocks are padded and weighted 0), so encoder and decoder run the same
  compiled XLA program on the same inputs in the same order;
- float32 throughout, no randomness (no dropout: `deterministic=True`), and only ops that XLA:CPU computes
  in a fixed order (matmuls, reductions and the embedding gradient's scatter-add run single-threaded or with
  a fixed partition for a given machine);
- the same machine kind: the same backend, device kind, CPU instruction set and core count, and JAX/jaxlib
  version (XLA's fusion and vectorisation decide the order of float additions). `lm.compression` records
  these in the file and refuses to decode elsewhere.
GPUs reorder floating-point atomics (scatter-add) and autotune kernels per process, so adaptive coding is
refused there unless XLA_FLAGS has --xla_gpu_deterministic_ops=true (untested: this project's machines have
no GPU).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from lm import cpu

OPTIMIZERS = ("adam", "sgd")
PARAM_SETS = ("all", "layers", "no_embed")  # layers: the blocks only; no_embed: all but token/position tables
B1, B2 = 0.9, 0.99


@dataclasses.dataclass(frozen=True)
class Adaptation:
  """Optimiser steps after each coded block; stored in the compressed file's header."""
  lr: float = 0.0  # 0: no adaptation (static model)
  steps: int = 1  # optimiser steps per block, on the same block
  optimizer: str = "adam"
  params: str = "all"

  @property
  def on(self) -> bool:
    return self.lr > 0

  def problems(self) -> list:
    out = []
    if not self.lr >= 0 or self.lr > 1:
      out.append(f"adapt lr={self.lr} must be in [0, 1] (0: no adaptation)")
    if not 1 <= self.steps <= 255:
      out.append(f"adapt steps={self.steps} must be in 1..255")
    if self.optimizer not in OPTIMIZERS:
      out.append(f"adapt optimizer={self.optimizer!r} must be one of {OPTIMIZERS}")
    if self.params not in PARAM_SETS:
      out.append(f"adapt params={self.params!r} must be one of {PARAM_SETS}")
    return out


def _label(path, which: str) -> str:
  name = jax.tree_util.keystr(path)
  embed = "'embed'" in name or "'pos_embed'" in name
  if which == "all":
    return "train"
  if which == "no_embed":
    return "freeze" if embed else "train"
  return "train" if "'layer_" in name else "freeze"  # layers


def _optimizer(a: Adaptation):
  base = optax.adam(a.lr, b1=B1, b2=B2) if a.optimizer == "adam" else optax.sgd(a.lr)
  labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: _label(p, a.params), params)
  return optax.multi_transform({"train": base, "freeze": optax.set_to_zero()}, labels)


class Updater:
  """init(params) -> optimiser state; update(params, state, inputs, targets, weights) -> (params, state).

  Both jitted, so the state has the same types and shardings before and after an update (one compiled
  update, not a second one for the first call's freshly initialised state)."""

  def __init__(self, model, adaptation: Adaptation):
    self.init, self.update = _jitted(model, adaptation)


@functools.lru_cache(maxsize=None)
def _jitted(model, a: Adaptation):
  optimizer = _optimizer(a)

  def loss(params, inputs, targets, weights):
    logits, _ = model.apply({"params": params}, inputs)
    logp = jax.nn.log_softmax(logits[..., :256])
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)

  def update(params, state, inputs, targets, weights):
    for _ in range(a.steps):
      grads = jax.grad(loss)(params, inputs, targets, weights)
      updates, state = optimizer.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  options = cpu.compiler_options()  # the train step's XLA:CPU settings: about twice as fast here
  return jax.jit(optimizer.init, compiler_options=options), jax.jit(update, compiler_options=options)
