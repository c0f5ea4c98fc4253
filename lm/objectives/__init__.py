"""Objectives, registered by file name: `config.objective.name = "pretrain"` loads lm/objectives/pretrain.py.

Each module defines `build(config, model, tokenizer) -> Objective`. Adding an objective is adding a file.
"""
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Optional

from lm.errors import UserError


@dataclasses.dataclass
class Objective:
  # (params, batch, rng) -> (scalar loss, dict of scalar metrics); pure and jit-able.
  loss_fn: Callable
  # (step, params) -> dict of process-local numpy rows for that step; a pure function of the step (and, for
  # on-policy objectives, the params), so resuming at step k continues the same stream.
  batches: Callable
  # Optional (params, step) -> dict of eval metrics beyond held-out bits per byte (exact match, pass@k, ...).
  evaluate: Optional[Callable] = None
  # Optional (rng, params) -> params: extra heads, or weights loaded from a pretrained checkpoint.
  init_params: Optional[Callable] = None
  # Optional host-side state that must survive a restart (JSON-able), e.g. an adaptive KL coefficient.
  get_state: Optional[Callable[[], Any]] = None
  set_state: Optional[Callable[[Any], None]] = None
  # Optimizer updates per batch: the train step splits the batch's rows into this many consecutive slices
  # (PPO's epochs x minibatches over one rollout, so one loop step is one rollout and resume stays exact).
  updates_per_step: int = 1


def names() -> list:
  import lm.objectives as pkg
  return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def get(name: str):
  if name not in names():
    raise UserError(f"objective.name={name!r} is unknown; available: {', '.join(names())}")
  return importlib.import_module(f"lm.objectives.{name}")
