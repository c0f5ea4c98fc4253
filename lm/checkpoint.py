"""Orbax checkpoints: atomic saves, keep the last N (plus the best by an eval metric), fall back past corrupt ones.

A checkpoint holds `state` (params, optimizer state, step, RNG: any pytree of arrays, sharded or not) and
`meta` (JSON: data-iterator state, metrics, config fingerprint). Orbax writes each step to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous checkpoint as the latest.
"""
import os
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath

from lm.errors import UserError



class Checkpointer:

  def __init__(self, directory, keep: int = 3, best_metric: str = "", async_save: bool = True):
    self.directory = os.path.abspath(directory)
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if best_metric:  # lower is better (a loss or bits per byte)
      policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[best_metric], reverse=True, n=1,
                                                    keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=async_save,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, metrics: dict | None = None):
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)),
                      metrics=metrics, force=True)

  def wait(self):
    self.manager.wait_until_finished()

  def restore(self, step: int, abstract_state):
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def restore_latest(self, abstract_state):
    """(state, meta) of the newest readable checkpoint, or None.

    An unreadable one is renamed to `<step>.unreadable` (kept for inspection, never reused) with a warning,
    and the one before it is tried.
    """
    for step in reversed(self.steps()):
      try:
        return self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  (half-copied or corrupted: use the previous one)
        reason = (str(e).splitlines() or [""])[0][:200]
        print(f"warning: checkpoint {self.directory}/{step} is unreadable ({type(e).__name__}: {reason}); moved "
              f"it to {step}.unreadable and fell back to an earlier one", file=sys.stderr)
        if jax.process_index() == 0:
          os.replace(os.path.join(self.directory, str(step)), os.path.join(self.directory, f"{step}.unreadable"))
        if jax.process_count() > 1:
          from jax.experimental import multihost_utils
          multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.manager.reload()
    return None

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract(tree, shardings=None):
  """ShapeDtypeStructs (with shardings) that tell Orbax the layout to restore into."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def checkpoint_dir(path: str) -> str:
  """Accept a run directory (holding checkpoints/) or a checkpoints directory."""
  sub = os.path.join(path, "checkpoints")
  if os.path.isdir(sub):
    return sub
  if os.path.isdir(path):
    return path
  raise UserError(f"checkpoint: no such run or checkpoint directory {path!r}")


def load_params(path: str, abstract_params):
  """Params of the newest readable checkpoint under `path`, restored into `abstract_params`' layout."""
  ckpt = Checkpointer(checkpoint_dir(path), async_save=False)
  try:
    if not ckpt.steps():
      raise UserError(f"checkpoint: {path!r} holds no checkpoints")
    step = ckpt.steps()[-1]
    # The manager's item_metadata is None for "state" until a handler is registered, so read the tree directly.
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(ckpt.directory) / str(step) / "state")
    saved = meta.get("params") if meta is not None else None
    if saved is not None:
      _check_shapes(path, saved, abstract_params)
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                     restore_args=ocp.checkpoint_utils.construct_restore_args(
                                         {"params": abstract_params}),
                                     partial_restore=True),  # params only: skip opt_state, step, rng
    ))
    return restored["state"]["params"]
  finally:
    ckpt.close()


def _check_shapes(path, saved, wanted):
  saved_flat = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(saved)}
  wanted_flat = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(wanted)}
  for key, shape in wanted_flat.items():
    if key not in saved_flat:
      raise UserError(f"checkpoint {path!r} has no param {key}: it was trained with another model config")
    if saved_flat[key] != shape:
      raise UserError(f"checkpoint {path!r} param {key} has shape {saved_flat[key]} but the model wants {shape}: "
                      "set --config.model.* to the checkpoint's model")
