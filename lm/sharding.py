"""The only module that knows the mesh: mesh from config, logical-axis rules, shardings of state and batches.

Axis types are Auto on purpose: the rules place params and a few activation constraints, and XLA's
partitioner propagates the rest. (Explicit axes would make every sharded contraction spell out its output
sharding, which the model code must not need to know.)
"""
import contextlib
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lm import options
from lm.errors import UserError
from lm.options import option

AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Params use the plain names, activations the act_* names, so a tensor dimension is
# never sharded twice over one mesh axis.
# `layers` (the leading axis of scanned layer params) stays unsharded: each scan step needs its whole layer.
RULES = dict(batch=("data", "fsdp"), length=None, pos=None, layers=None, head_dim=None, embed="fsdp",
             vocab="tensor", heads="tensor", kv_heads="tensor", mlp="tensor", act_embed=None, act_vocab="tensor",
             act_heads="tensor", act_kv_heads="tensor", act_mlp="tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig(options.Group):
  data: int = option(-1, min=-1, doc="-1: all devices not used by the other axes")
  fsdp: int = option(1, min=-1)
  tensor: int = option(1, min=-1)
  num_devices: int = option(0, min=0, doc="0: every visible device; N: the first N")
  rules: dict = option(RULES, doc="logical axis -> mesh axis, tuple of mesh axes, or None (replicated)")

  def check(self, config) -> list:
    problems = [f"mesh.{a}=0 must be a positive size or -1" for a in AXES if getattr(self, a) == 0]
    for name, axes in self.rules.items():
      axes = (axes,) if isinstance(axes, str) else (axes or ())
      bad = [a for a in axes if a not in AXES]
      if bad:
        problems.append(f"mesh.rules.{name} names {', '.join(map(repr, bad))}; mesh axes are {', '.join(AXES)}")
    return problems


def mesh_shape(mesh_cfg, n_devices: int) -> tuple:
  sizes = [int(mesh_cfg[a]) for a in AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh: at most one of data/fsdp/tensor may be -1, got {dict(zip(AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n_devices % known:
      raise UserError(f"mesh: {dict(zip(AXES, sizes))} cannot fill {n_devices} devices "
                      f"({n_devices} is not a multiple of {known}); fix --config.mesh.*")
    sizes[sizes.index(-1)] = n_devices // known
  if int(np.prod(sizes)) != n_devices:
    raise UserError(f"mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are {n_devices} devices; "
                    "set --config.mesh.data/fsdp/tensor (one may be -1)")
  return tuple(sizes)


def mesh_devices(mesh_cfg) -> list:
  """All devices, or the first mesh.num_devices of them (e.g. a single-device reference run)."""
  devices = jax.devices()
  n = int(mesh_cfg.get("num_devices", 0) or 0)
  if n > len(devices):
    raise UserError(f"mesh.num_devices={n} but only {len(devices)} devices are visible")
  return devices[:n] if n else devices


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  devices = mesh_devices(mesh_cfg) if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def rules(mesh_cfg) -> tuple:
  return tuple((name, tuple(v) if isinstance(v, (list, tuple)) else v) for name, v in mesh_cfg.rules.items())


@contextlib.contextmanager
def use(mesh, axis_rules):
  """Trace and run under this mesh, with the logical-axis rules the model's constraints read."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
    yield


def logical_to_sharding(logical_specs, mesh, axis_rules):
  return nn.logical_to_mesh_sharding(logical_specs, mesh, axis_rules)


def param_shardings(boxed_abstract_params, mesh, axis_rules):
  """NamedShardings for params from the logical names their initialisers carry."""
  return logical_to_sharding(nn.get_partition_spec(boxed_abstract_params), mesh, axis_rules)


def opt_state_shardings(optimizer, abstract_params, p_shardings, mesh):
  """Optimizer moments sharded exactly like their params; scalars (counts) replicated."""
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  # optax.partition (Muon + AdamW) keeps each part's moments as a params tree with MaskedNode where the other
  # part's params are: those stay MaskedNode.
  masked = optax.transforms.MaskedNode
  return optax.tree_map_params(optimizer, lambda x, s: x if isinstance(x, masked) else s, abstract_opt, p_shardings,
                               transform_non_params=lambda _: replicated,
                               is_leaf=lambda x: isinstance(x, (NamedSharding, masked)))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def abstract_batch(shapes, mesh):
  """Batch ShapeDtypeStructs placed as global_batch places real rows: for compiling without data."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def frozen_copy(params):
  """params in buffers of their own, with the same shardings: a copy the train step's donation cannot free (a
  frozen reference policy, a critic's starting trunk)."""
  return jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False) if isinstance(x, jax.Array) else x,
                      params)


def global_batch(local, mesh):
  """Process-local numpy rows (any pytree of arrays with rows first) -> global jax.Arrays sharded over
  (data, fsdp). Leaves that already are such global arrays (a rollout made on the devices) pass through."""
  sharding = batch_sharding(mesh)

  def place(v):
    if isinstance(v, jax.Array) and v.sharding.is_equivalent_to(sharding, v.ndim):
      return v
    return jax.make_array_from_process_local_data(sharding, np.asarray(v))

  return jax.tree.map(place, local)


def replicate(tree, mesh):
  """Host values that every process holds alike (numpy arrays, scalars) -> global arrays replicated on the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda v: jax.make_array_from_callback(np.shape(v), sharding, lambda i: np.asarray(v)[i]),
                      tree)


def local_part(x) -> np.ndarray:
  """This process's rows (its `local_rows` slice) of a global array sharded over the batch axes, as numpy."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # replicas (tensor axis) collapse
  part = np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])
  rows = local_rows(x.shape[0])
  if min(shards) != rows.start or len(part) != rows.stop - rows.start:
    raise ValueError(f"rows {min(shards)}..+{len(part)} on this process are not its batch slice {rows}")
  return part


def local_rows(global_rows: int) -> slice:
  """This process's rows of a global batch (processes own equal, contiguous slices)."""
  n, i = jax.process_count(), jax.process_index()
  if global_rows % n:
    raise UserError(f"batch of {global_rows} rows does not split over {n} processes; make it a multiple of {n}")
  per = global_rows // n
  return slice(i * per, (i + 1) * per)
