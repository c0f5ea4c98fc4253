"""Open a finished (or running) run directory, or a Hugging Face model directory: its resolved config and its newest
readable params."""
import json
import os

import ml_collections

from lm.errors import UserError


def load_config(run_dir: str) -> ml_collections.ConfigDict:
  from lm.hf import load as hf_load
  if hf_load.is_hf_dir(run_dir):
    return hf_config(run_dir)
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{run_dir!r} is not a run directory (no config.json); give the --workdir of a training run "
                    "or a Hugging Face model directory")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}") from None


def hf_config(directory: str) -> ml_collections.ConfigDict:
  """The default config around a Hugging Face model directory: its architecture, its tokenizer (if it has one)."""
  from configs import base
  from lm import model as model_lib
  c = base.get_config()
  c.model = model_lib.ModelConfig.config()
  c.checkpoint.init_from = directory
  if any(os.path.exists(os.path.join(directory, f)) for f in ("tokenizer.json", "tokenizer.model")):
    c.tokenizer = f"hf:{directory}"
  return c


def load(run_dir: str, mesh_overrides: dict | None = None, step: int | None = None, heads: tuple = ()):
  """(Setup, params) of a run (its newest readable checkpoint, or `step`) or of a Hugging Face model directory, on
  the current devices (data-parallel mesh unless overridden): the model alone, or with the scalar heads named in
  `heads` (e.g. "reward_head")."""
  from lm.hf import load as hf_load
  from lm.setup import Setup
  config = load_config(run_dir)
  config.mesh.update(data=-1, fsdp=1, tensor=1, num_devices=0, **(mesh_overrides or {}))
  setup = Setup(config)
  with setup.use():
    if hf_load.is_hf_dir(run_dir):
      import jax
      return setup, setup.init_from(run_dir, jax.random.PRNGKey(0))
    return setup, setup.load_params(run_dir, step=step, drop_heads=True, heads=heads)  # other heads left out
