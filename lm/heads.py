"""Scalar heads on the transformer's final hidden states: PPO's value head and a reward model's reward head.

A head is {"kernel": [d_model], "bias": []} in float32, replicated over the mesh, beside the model's params
(params["value_head"], params["reward_head"]); the model itself never reads it.
"""
import jax
import jax.numpy as jnp

from lm import sharding


def init(rng, params, d_model: int) -> dict:
  """A fresh head placed like `params` (replicated on their mesh when they are sharded)."""
  head = {"kernel": jax.random.normal(rng, (d_model,)) * 0.02, "bias": jnp.zeros(())}
  leaf = jax.tree.leaves(params)[0]
  if isinstance(getattr(leaf, "sharding", None), jax.sharding.NamedSharding):
    head = jax.tree.map(lambda x: jax.device_put(x, sharding.replicated(leaf.sharding.mesh)), head)
  return jax.tree.map(lambda x: x.astype(jnp.float32), head)


def abstract(d_model: int, mesh=None) -> dict:
  """The head as ShapeDtypeStructs (replicated on `mesh`), for loading it from a checkpoint."""
  s = sharding.replicated(mesh) if mesh is not None else None
  return {"kernel": jax.ShapeDtypeStruct((d_model,), jnp.float32, sharding=s),
          "bias": jax.ShapeDtypeStruct((), jnp.float32, sharding=s)}


def apply(head: dict, hidden):
  """[..., d_model] hidden states -> [...] scalars (float32)."""
  return hidden.astype(jnp.float32) @ head["kernel"] + head["bias"]
