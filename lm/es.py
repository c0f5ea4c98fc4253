"""Evolution strategies: "mutate the weights slightly, keep what scores better", as an update direction.

A population of N members perturbs the params with noise sigma * eps_i; each member's fitness f_i (shaped:
centred ranks or z-scores) weighs its noise, and the estimate of the fitness gradient is

    g = sum_i f_i eps_i / (N sigma)        (theta += lr * g with plain SGD; any optax optimizer may take it)

(Salimans et al. 2017; Qiu et al. 2025 fine-tune LLMs this way). Noise is never stored: member i's eps is
regenerated from its key, fold_in(fold_in(seed, step), i) (pairs share one key with opposite signs when sampling
is antithetic, which cancels the zero-order term f(theta) exactly). "lowrank" noise draws each matrix's eps as
A B^T / sqrt(r) (EGGROLL, arXiv 2511.16652): r (m + n) numbers per m x n matrix instead of m n, with unit
variance per entry like the full noise.
"""
import fnmatch

import jax
import jax.numpy as jnp
import numpy as np

from lm import checkpoint as ckpt_lib
from lm import layer_layout


def member_keys(seed: int, step: int, population: int, antithetic: bool) -> tuple:
  """(keys [N, 2] uint32, signs [N] float32) for step `step`'s population, a pure function of (seed, step)."""
  base = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0xE5), step)
  n_noise = population // 2 if antithetic else population
  keys = np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n_noise)))
  if antithetic:  # member 2k is +eps_k, member 2k + 1 is -eps_k
    return np.repeat(keys, 2, axis=0), np.tile(np.array([1.0, -1.0], np.float32), n_noise)
  return keys, np.ones(population, np.float32)


def selection(params, globs: str):
  """A pytree of bools: which params ES perturbs ("" or "*": all; else comma-separated globs of param paths)."""
  patterns = [g.strip() for g in (globs or "").split(",") if g.strip()]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not patterns or any(fnmatch.fnmatchcase(ckpt_lib.path_of(path), g) for g in patterns), params)


def noise(params, key, *, kind: str = "full", rank: int = 1, mask=None):
  """eps for one member: a pytree like params (float32), N(0, 1) per entry; zero where mask is False."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  masks = jax.tree.leaves(mask) if mask is not None else [True] * len(leaves)
  out = []
  for i, ((path, x), keep) in enumerate(zip(leaves, masks)):
    k = jax.random.fold_in(key, i)
    if not keep:
      out.append(jnp.zeros(x.shape, jnp.float32))
    elif kind == "lowrank" and layer_layout.is_matrix(path, x):
      # Scanned layers stack their matrices on a leading axis: each layer gets low-rank noise of its own.
      per_layer = jax.vmap(lambda k, y: _lowrank(k, y.shape, rank)) if layer_layout.layer_axes(path) else (
          lambda k, y: _lowrank(k, y.shape, rank))
      keys = jax.random.split(k, x.shape[0]) if layer_layout.layer_axes(path) else k
      out.append(per_layer(keys, x))
    else:
      out.append(jax.random.normal(k, x.shape))
  return jax.tree.unflatten(treedef, out)


def _lowrank(k, shape, rank):
  m, n = shape[0], int(np.prod(shape[1:]))
  a, b = jax.random.normal(k, (m, rank)), jax.random.normal(jax.random.fold_in(k, 1), (n, rank))
  return (a @ b.T / np.sqrt(rank)).reshape(shape)


def perturb(params, key, sign, sigma: float, **noise_kw):
  """params + sign * sigma * eps(key), in the params' dtypes."""
  eps = noise(params, key, **noise_kw)
  return jax.tree.map(lambda p, e: (p + sign * sigma * e).astype(p.dtype), params, eps)


def gradient(params, fitness, keys, signs, sigma: float, **noise_kw):
  """g = sum_i f_i sign_i eps(key_i) / (N sigma), one member's noise at a time (memory: two params-sized trees)."""
  n = fitness.shape[0]

  def body(i, acc):
    eps = noise(params, keys[i], **noise_kw)
    w = fitness[i] * signs[i]
    return jax.tree.map(lambda a, e: a + w * e, acc, eps)

  zero = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  acc = jax.lax.fori_loop(0, n, body, zero)
  return jax.tree.map(lambda a, p: (a / (n * sigma)).astype(p.dtype), acc, params)


def shape_fitness(raw, how: str):
  """Centred ranks in [-0.5, 0.5] (Salimans et al.; ties share their mean rank), z-scores, or the raw values."""
  raw = np.asarray(raw, np.float64)
  if how == "none":
    return raw.astype(np.float32)
  if how == "zscore":
    std = raw.std()
    return ((raw - raw.mean()) / std if std > 0 else np.zeros_like(raw)).astype(np.float32)
  order = raw.argsort(kind="stable")
  ranks = np.empty(len(raw))
  ranks[order] = np.arange(len(raw))
  for v in np.unique(raw):  # ties: the mean of their ranks, so equal fitness gets equal weight
    ranks[raw == v] = ranks[raw == v].mean()
  return (ranks / max(len(raw) - 1, 1) - 0.5).astype(np.float32)


def surrogate_loss(params, fitness, keys, signs, value, sigma: float, **noise_kw):
  """A loss whose gradient is exactly -g (so the loop's optimizer ascends the fitness) and whose value is
  `value` (minus the mean raw fitness, for the log); g itself is computed without differentiation."""
  g = jax.lax.stop_gradient(gradient(params, fitness, keys, signs, sigma, **noise_kw))
  linear = -sum(jnp.vdot(gi.astype(jnp.float32), p.astype(jnp.float32))
                for gi, p in zip(jax.tree.leaves(g), jax.tree.leaves(params)))
  return linear - jax.lax.stop_gradient(linear) + value
