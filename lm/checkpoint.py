"""Orbax checkpoints: atomic saves, keep the last N (plus the best by an eval metric), and one loading path.

A checkpoint holds `state` (params, optimizer state, step, RNG: any pytree of arrays, sharded or not) and
`meta` (JSON: data-iterator state, objective state, config). Orbax writes each step to a temporary directory
and renames it when complete, so a crash mid-save leaves the previous checkpoint as the latest; leftover
temporary directories are removed when a run starts again.

Loading tells two failures apart, because they need opposite handling:
- unreadable (truncated, garbled): skipped with a warning and the previous checkpoint is used; a resumed run
  also renames it `<step>.unreadable`, kept for inspection and never reused;
- incompatible with this config (another tree or shape): one error naming the differing params, and nothing
  is renamed or deleted.
Resume (`Checkpointer.restore_latest`) and every reader of params (`load_params`: init_from, sampling,
evaluation, compression) go through the same check.
"""
import dataclasses
import errno
import fnmatch
import logging
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath

from lm import layer_layout
from lm import options
from lm.errors import UserError
from lm.options import option


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(options.Group):
  every: int = option(500, min=1)
  keep: int = option(3, min=1, doc="the newest N are kept (plus the best by eval bits per byte)")
  init_from: str = option("", doc="a run or checkpoint directory whose params start this run (fine-tuning)")
  init_fresh: str = option("", doc="comma-separated param paths (globs, e.g. 'layer_3/*') initialised fresh "
                                   "instead of loaded from init_from")
  init_drop: str = option("", doc="comma-separated globs of init_from params this model may leave unused")


class _QuietOrbax(logging.Filter):
  """Orbax logs a traceback for every failed save or restore, and asyncio one for each of its failed writes
  ("exception was never retrieved"); this module reports each failure in one line instead."""

  def filter(self, record):
    if record.levelno < logging.WARNING:
      return True
    if "/orbax/" in record.pathname:
      return False
    return not (record.name == "asyncio" and "never retrieved" in record.getMessage())


logging.getLogger("absl").addFilter(_QuietOrbax())
logging.getLogger("asyncio").addFilter(_QuietOrbax())


def path_of(keys) -> str:
  """'params/layer_0/attn/q' for a tree path (dict keys, sequence indices and attribute names alike)."""
  parts = []
  for k in keys:
    parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
  return "/".join(parts)


def shapes(tree) -> dict:
  """{path: (shape, dtype)} of every array leaf of a state tree, an abstract tree or Orbax metadata."""
  return {path_of(p): (tuple(x.shape), str(x.dtype)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def differences(saved: dict, wanted: dict, what: str = "") -> list:
  """Human-readable differences between two `shapes()` maps, params first."""
  out = []
  for key in sorted(set(saved) | set(wanted), key=lambda k: (not k.startswith("params"), k)):
    if key not in saved:
      out.append(f"{key} is not in the checkpoint")
    elif key not in wanted:
      out.append(f"{key} is in the checkpoint but not in this {what or 'model'}")
    elif saved[key][0] != wanted[key][0]:
      out.append(f"{key} has shape {saved[key][0]} in the checkpoint, {wanted[key][0]} here")
  return out


def _summary(diffs: list, n: int = 4) -> str:
  return "; ".join(diffs[:n]) + (f"; and {len(diffs) - n} more" if len(diffs) > n else "")


class Checkpointer:

  def __init__(self, directory, keep: int = 3, best_metric: str = "", async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if best_metric:  # lower is better (a loss or bits per byte)
      policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[best_metric], reverse=True, n=1,
                                                    keep_checkpoints_without_metrics=False))
    options_ = ocp.CheckpointManagerOptions(
        create=not read_only, read_only=read_only, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options_)
    except OSError as e:
      raise UserError(f"cannot use checkpoint directory {self.directory}: {e.strerror or e}") from None
    self.pending = None  # the step of a save that may still be in flight

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, metrics: dict | None = None):
    # Orbax waits for the previous save here anyway; waiting first names the right step if that one failed.
    self.wait()
    self._check_room(step, state)
    try:
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)),
                        metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except  (the synchronous part of the save failed)
      raise self._save_error(step, e) from None
    self.pending = step

  def _check_room(self, step: int, state):
    """Refuse a save that cannot fit, before it starts: a save that runs out of space fails in Orbax's background
    writers, each of which prints a traceback (measured: 20-30 per failed save)."""
    need = sum(int(x.nbytes) for x in jax.tree.leaves(state)) // max(jax.process_count(), 1)
    need = int(need * 1.1) + (1 << 16)  # OCDBT's index and the metadata files
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise UserError(f"saving checkpoint {step} in {self.directory} needs about {need / 2**20:.1f} MiB but "
                      f"{free / 2**20:.1f} MiB are free (no space left on device); stopped; last complete "
                      f"checkpoint: {self.last_complete()}")

  def check_saved(self):
    """Raise (one line) if the last asynchronous save failed; cheap enough to call every step."""
    if self.pending is None:
      return
    try:
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self.pending, e) from None

  def wait(self):
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self.pending, e) from None
    self.pending = None

  def last_complete(self) -> str:
    try:
      done = [s for s in self.steps() if s != self.pending]
    except Exception:  # pylint: disable=broad-except
      done = []
    return f"step {done[-1]}" if done else "none"

  def _save_error(self, step, e: Exception) -> UserError:
    cause = e
    while cause is not None and not isinstance(cause, OSError):
      cause = cause.__cause__ or cause.__context__
    reason = (os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else
              (str(e).splitlines() or [type(e).__name__])[0][:200])
    if (isinstance(cause, OSError) and cause.errno == errno.ENOSPC) or "No space left" in str(e):
      reason = "no space left on device"
    self.pending = step
    return UserError(f"saving checkpoint {step} in {self.directory} failed ({reason}); stopped; last complete "
                     f"checkpoint: {self.last_complete()}")

  def restore(self, step: int, abstract_state):
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def saved_shapes(self, step: int):
    """`shapes()` of checkpoint `step`'s state, or an exception if its metadata cannot be read."""
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.directory) / str(step) / "state")
    tree = getattr(tree, "tree", tree)
    if not tree:
      raise ValueError("empty metadata")
    return shapes(tree)

  def restore_latest(self, abstract_state):
    """(state, meta) of the newest readable checkpoint, or None if there is none.

    Unreadable ones are renamed `<step>.unreadable` with a warning and the one before is tried; one that does
    not fit `abstract_state` stops with an error and changes nothing.
    """
    wanted = shapes(abstract_state)
    for step in reversed(self.steps()):
      try:
        saved = self.saved_shapes(step)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      diffs = differences(saved, wanted, "config")
      if diffs:
        raise UserError(f"checkpoint {self.directory}/{step} does not fit this config ({_summary(diffs)}); "
                        "nothing was changed: resume it with the config it was trained with, or use another "
                        "--workdir")
      try:
        return self.restore(step, abstract_state)
      except PermissionError as e:
        raise UserError(f"cannot read checkpoint {self.directory}/{step}: {e.strerror}") from None
      except Exception as e:  # pylint: disable=broad-except  (half-copied or corrupted: use the previous one)
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, e: Exception):
    print(f"warning: checkpoint {self.directory}/{step} is unreadable ({_reason(e)}); moved it to "
          f"{step}.unreadable and fell back to an earlier one", file=sys.stderr)
    if jax.process_index() == 0:
      os.replace(os.path.join(self.directory, str(step)), os.path.join(self.directory, f"{step}.unreadable"))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self.manager.reload()

  def close(self, quiet: bool = False):
    """Wait for a save in flight, then close. quiet: the run is already failing, so don't raise over it."""
    try:
      self.wait()
    except UserError:
      if not quiet:
        raise
      # A failed save may still have writes in flight whose callbacks need Orbax's event loop: closing it now
      # makes each of them print a traceback. The process is ending; leave it open.
      return
    self.manager.close()


def _reason(e: Exception) -> str:
  return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


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
  raise UserError(f"checkpoint: no such run, checkpoint or Hugging Face model directory {path!r}")


def _globs(spec: str) -> list:
  return [p.strip() for p in (spec or "").split(",") if p.strip()]


def load_params(path: str, abstract_params, fresh: str = "", drop: str = "", step: int | None = None,
                drop_heads: bool = False):
  """(params, fresh paths) from the newest readable checkpoint under `path`, in `abstract_params`' layout.

  Every param of the model must be in the checkpoint with its shape, and every param of the checkpoint must be
  used, except the paths that match the `fresh` globs (left out of the result, for the caller to initialise)
  and the `drop` globs (ignored). Unreadable checkpoints are skipped with a warning (never renamed: the run
  may belong to someone else); a mismatch is one error naming the params. `step`: that checkpoint only.
  drop_heads: also ignore checkpoint params outside the model's top-level names (a run's value or reward head,
  when its own checkpoint is read for the model alone).
  A checkpoint saved with the other layer layout (model.scan_layers, lm/layer_layout.py) is converted on load;
  the checks, the globs and the messages then name its params as this model names them.
  """
  ckpt = Checkpointer(checkpoint_dir(path), async_save=False, read_only=True)
  try:
    steps = ckpt.steps()
    if step is not None:
      if step not in steps:
        raise UserError(f"checkpoint: {path!r} has no step {step}; it has {steps}")
      steps = [step]
    if not steps:
      raise UserError(f"checkpoint: {path!r} holds no checkpoints; give a run directory, a checkpoint directory or "
                      "a Hugging Face model directory (config.json with a model_type, *.safetensors)")
    wanted = {k[len("params/"):]: v for k, v in shapes({"params": abstract_params}).items()}
    scanned = layer_layout.is_scanned(abstract_params)
    fresh_globs, drop_globs = _globs(fresh), _globs(drop)
    matches = lambda key, globs: any(fnmatch.fnmatchcase(key, g) for g in globs)
    for step in reversed(steps):  # pylint: disable=redefined-argument-from-local
      try:
        own = {k[len("params/"):]: v for k, v in ckpt.saved_shapes(step).items() if k.startswith("params/")}
      except Exception as e:  # pylint: disable=broad-except
        print(f"warning: checkpoint {ckpt.directory}/{step} is unreadable ({_reason(e)}); trying an earlier one",
              file=sys.stderr)
        continue
      convert = any(k.startswith(layer_layout.SCANNED + "/") for k in own) != scanned
      saved = layer_layout.shapes_to_layout(own, scanned) if convert else own
      if drop_heads:
        tops = {k.split("/")[0] for k in wanted}
        saved = {k: v for k, v in saved.items() if k.split("/")[0] in tops}
      fresh_keys = {k for k in wanted if matches(k, fresh_globs)}
      diffs = differences({k: v for k, v in saved.items() if k not in fresh_keys and not matches(k, drop_globs)},
                          {k: v for k, v in wanted.items() if k not in fresh_keys})
      if diffs:
        raise UserError(f"checkpoint {ckpt.directory}/{step} does not fit this model ({_summary(diffs)}); set "
                        "--config.model.* to the checkpoint's model, or list params to initialise fresh in "
                        "checkpoint.init_fresh (and unused ones in checkpoint.init_drop)")
      needed = _without(abstract_params, fresh_keys)
      item = {"params": _in_saved_layout(own, abstract_params, not scanned) if convert else needed}
      try:
        restored = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)))  # params only: skip opt_state, step, rng (and dropped params)
      except PermissionError as e:
        raise UserError(f"cannot read checkpoint {ckpt.directory}/{step}: {e.strerror}") from None
      except Exception as e:  # pylint: disable=broad-except
        print(f"warning: checkpoint {ckpt.directory}/{step} is unreadable ({_reason(e)}); trying an earlier one",
              file=sys.stderr)
        continue
      params = restored["state"]["params"]
      if convert:
        params = _to_model_layout(params, needed, scanned)
      return params, sorted(fresh_keys)
    raise UserError(f"checkpoint: every checkpoint under {path!r} is unreadable (steps {steps})")
  finally:
    ckpt.manager.close()


def _without(tree, keys: set):
  """The nested dict `tree` without the leaves at the '/'-joined `keys` (empty subtrees removed)."""
  if not keys:
    return tree

  def strip(node, prefix):
    if not isinstance(node, dict):
      return node
    out = {}
    for k, v in node.items():
      key = f"{prefix}{k}"
      if key in keys:
        continue
      v = strip(v, key + "/")
      if not (isinstance(v, dict) and not v):
        out[k] = v
    return out

  return strip(tree, "")


def _in_saved_layout(own: dict, abstract_params, saved_scanned: bool):
  """What to restore from a checkpoint of the other layer layout: each of its params (`own`: {path: (shape,
  dtype)}) that this model has a counterpart for, with its saved shape and the counterpart's dtype and sharding."""
  template = {path_of(p): x for p, x in jax.tree_util.tree_leaves_with_path(
      layer_layout.to_layout(abstract_params, saved_scanned))}
  item = {}
  for key, (shape, _) in own.items():
    if key in template:  # the rest (layers or heads this model lacks) passed the drop checks: not read
      node = item
      *path, last = key.split("/")
      for p in path:
        node = node.setdefault(p, {})
      node[last] = jax.ShapeDtypeStruct(shape, template[key].dtype, sharding=template[key].sharding)
  return item


def _to_model_layout(params, needed, scanned: bool):
  """Restored params of the other layout -> the `needed` params (abstract, sharded) in this model's layout."""
  keep = {path_of(p) for p, _ in jax.tree_util.tree_leaves_with_path(needed)}

  def convert(tree):
    tree = layer_layout.to_layout(tree, scanned)
    return _without(tree, {path_of(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)} - keep)

  return jax.jit(convert, out_shardings=jax.tree.map(lambda x: x.sharding, needed))(params)
