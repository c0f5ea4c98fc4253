"""The two layouts of a model's layer params (`model.scan_layers`), and conversion between them.

  unrolled: {"layer_0": {"attn": {"q": [d, h, hd], ...}}, "layer_1": {...}, ...}   one subtree per layer
  scanned:  {"layers": {"attn": {"q": [n_layers, d, h, hd], ...}}}                 stacked on a leading axis

Everything else (embeddings, final norm, heads) is the same in both. The functions take any nested dict whose
leaves are arrays or ShapeDtypeStructs; an abstract leaf keeps its sharding, with the layer axis unsharded (as the
`layers` rule in lm/sharding.py places it). `lm/checkpoint.py:load_params` uses them to load a checkpoint saved in
either layout into a model of either layout.
"""
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

SCANNED = "layers"
_LAYER = re.compile(r"layer_(\d+)")


def is_scanned(params) -> bool:
  return SCANNED in params


def layer_axes(path) -> int:
  """1 for a leaf of the scanned layers (its leading axis counts layers), 0 for any other leaf of a params tree."""
  return int(any(getattr(k, "key", None) == SCANNED for k in path))


def is_matrix(path, x) -> bool:
  """A matrix of one layer (or outside the layers), not a stack of vectors: a scanned norm scale [n_layers, d] is
  a vector per layer, and must be decayed (or not) and optimised exactly as its unrolled [d] is."""
  return x.ndim - layer_axes(path) >= 2


def _layer_keys(params) -> list:
  """The unrolled layer names of `params`, in layer order (layer_0, layer_1, ..., layer_10)."""
  found = sorted((int(m.group(1)), k) for k in params if (m := _LAYER.fullmatch(k)))
  if [i for i, _ in found] != list(range(len(found))):
    raise ValueError(f"layers {[k for _, k in found]} are not layer_0..layer_{len(found) - 1}")
  return [k for _, k in found]


def _abstract(shape, x, spec):
  sharding = x.sharding
  if isinstance(sharding, NamedSharding):
    sharding = NamedSharding(sharding.mesh, P(*spec))
  return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)


def _stack(*xs):
  x = xs[0]
  if isinstance(x, jax.ShapeDtypeStruct):
    spec = tuple(x.sharding.spec) if isinstance(x.sharding, NamedSharding) else ()
    return _abstract((len(xs), *x.shape), x, (None, *spec))
  return jnp.stack(xs)


def _take(x, i: int):
  if isinstance(x, jax.ShapeDtypeStruct):
    spec = tuple(x.sharding.spec)[1:] if isinstance(x.sharding, NamedSharding) else ()
    return _abstract(x.shape[1:], x, spec)
  return x[i]


def to_scanned(params) -> dict:
  """Unrolled -> scanned (a scanned tree, or one without layers, is returned as it is)."""
  keys = _layer_keys(params)
  if not keys:
    return params
  rest = {k: v for k, v in params.items() if k not in keys}
  return {**rest, SCANNED: jax.tree.map(_stack, *[params[k] for k in keys])}


def to_unrolled(params) -> dict:
  """Scanned -> unrolled (an unrolled tree is returned as it is)."""
  if not is_scanned(params):
    return params
  stacked = params[SCANNED]
  n = jax.tree.leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in params.items() if k != SCANNED}
  return {**rest, **{f"layer_{i}": jax.tree.map(lambda x, i=i: _take(x, i), stacked) for i in range(n)}}


def to_layout(params, scanned: bool) -> dict:
  return to_scanned(params) if scanned else to_unrolled(params)


def shapes_to_layout(flat: dict, scanned: bool) -> dict:
  """The same conversion for a flat {'layer_0/attn/q': (shape, dtype)} map (checkpoint metadata)."""
  tree = {}
  for key, (shape, dtype) in flat.items():
    node = tree
    *path, last = key.split("/")
    for p in path:
      node = node.setdefault(p, {})
    node[last] = jax.ShapeDtypeStruct(shape, dtype)
  if scanned and _layer_keys(tree):
    layers = [tree[k] for k in _layer_keys(tree)]
    if len({str(jax.tree.structure(t)) for t in layers}) > 1 or \
        len({tuple(map(lambda x: x.shape, jax.tree.leaves(t))) for t in layers}) > 1:
      return flat  # layers of different shapes cannot stack: leave it to the caller's shape check to report
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(to_layout(tree, scanned)):
    out["/".join(str(k.key) for k in path)] = (tuple(x.shape), str(x.dtype))
  return out
