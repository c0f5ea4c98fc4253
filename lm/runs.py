"""Open a finished (or running) run directory: its resolved config and its newest readable params."""
import json
import os

import ml_collections

from lm.errors import UserError


def load_config(run_dir: str) -> ml_collections.ConfigDict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{run_dir!r} is not a run directory (no config.json); give the --workdir of a training run")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}") from None


def load(run_dir: str, mesh_overrides: dict | None = None, step: int | None = None, heads: tuple = ()):
  """(Setup, params) of a run (its newest readable checkpoint, or `step`), on the current devices (data-parallel
  mesh unless overridden): the model alone, or with the scalar heads named in `heads` (e.g. "reward_head")."""
  from lm.setup import Setup
  config = load_config(run_dir)
  config.mesh.update(data=-1, fsdp=1, tensor=1, num_devices=0, **(mesh_overrides or {}))
  setup = Setup(config)
  with setup.use():
    return setup, setup.load_params(run_dir, step=step, drop_heads=True, heads=heads)  # other heads left out
