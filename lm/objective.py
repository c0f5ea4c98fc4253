"""The contract between the train loop and an objective (lm/objectives/<name>.py): a pure loss over a batch, and a
producer of each step's batch, plus optional extras (evaluation, extra heads, state that survives a restart)."""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional


class Batch(NamedTuple):
  rows: Any  # this process's rows of the step's global batch: a pytree of numpy arrays, leading axis = rows
  stats: dict = {}  # host-side scalars about how the rows were made (rollout statistics), logged with the step


@dataclasses.dataclass
class Objective:
  # (params, rows, rng) -> (scalar loss, dict of scalar metrics); pure and jit-able.
  loss_fn: Callable
  # (step, params) -> Batch for that step; a pure function of the step (and, for on-policy objectives, the
  # params), so resuming at step k continues the same stream. Data is read lazily, on the first call.
  batches: Callable[[int, Any], Batch]
  # () -> the global batch as ShapeDtypeStructs (what the dry run compiles against, without any data).
  batch_shapes: Callable[[], Any]
  # Optional (params, step) -> dict of eval metrics beyond held-out bits per byte (exact match, pass@k, ...).
  evaluate: Optional[Callable] = None
  # Optional (rng, params) -> params: extra heads (a value head, a reward head); pure, so the dry run can trace it.
  init_params: Optional[Callable] = None
  # Optional (params) -> None, called once with the starting params before any update (and before a resumed
  # run restores its checkpoint): e.g. keep them as the frozen reference of a KL term.
  on_start: Optional[Callable] = None
  # Optional host-side state that must survive a restart (JSON-able), e.g. an adaptive KL coefficient.
  get_state: Optional[Callable[[], Any]] = None
  set_state: Optional[Callable[[Any], None]] = None
  # Optimizer updates per batch: the train step splits the batch's rows into this many consecutive slices
  # (PPO's epochs x minibatches over one rollout, so one loop step is one rollout and resume stays exact).
  updates_per_step: int = 1


def parse_options(options_cls, config):
  """An objective's typed options from config.objective; one UserError lists every problem."""
  return options_cls.parse(config.objective, "objective", config, ignore=("name",))


