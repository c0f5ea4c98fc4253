"""The only module that knows the mesh: mesh from config, logical-axis rules, shardings of state and batches.

Axis types are Auto on purpose: the rules place params and a few activation constraints, and XLA's
partitioner propagates the rest. (Explicit axes would make every sharded contraction spell out its output
sharding, which the model code must not need to know.)
"""
import contextlib

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lm.errors import UserError

AXES = ("data", "fsdp", "tensor")


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
  return optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, p_shardings,
                               transform_non_params=lambda _: replicated,
                               is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local: dict, mesh) -> dict:
  """Process-local numpy rows -> global jax.Arrays sharded over (data, fsdp)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def local_rows(global_rows: int) -> slice:
  """This process's rows of a global batch (processes own equal, contiguous slices)."""
  n, i = jax.process_count(), jax.process_index()
  if global_rows % n:
    raise UserError(f"batch of {global_rows} rows does not split over {n} processes; make it a multiple of {n}")
  per = global_rows // n
  return slice(i * per, (i + 1) * per)
