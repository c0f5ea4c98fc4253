"""The `train.*` config group and the optimizer it builds: AdamW with warm-up and a cosine or constant schedule."""
import dataclasses

import jax
import optax

from lm import options
from lm.options import option


@dataclasses.dataclass(frozen=True)
class TrainConfig(options.Group):
  steps: int = option(2000, min=0)
  optimizer: str = option("adamw", choices=("adamw", "sgd"), doc="sgd: plain steps (no moments), e.g. for ES")
  batch_size: int = option(12, min=1, doc="global rows per step, across all processes and devices")
  grad_accum: int = option(1, min=1, doc="micro-batches per step (the batch's rows split evenly)")
  lr: float = option(1e-3, min=0.0)
  min_lr: float = option(1e-4, min=0.0)
  warmup_steps: int = option(100, min=0)
  decay_steps: int = option(0, min=0, doc="0: train.steps")
  schedule: str = option("cosine", choices=("cosine", "constant"))
  b1: float = option(0.9, min=0.0, max=1.0)
  b2: float = option(0.99, min=0.0, max=1.0)
  weight_decay: float = option(0.1, min=0.0)
  grad_clip: float = option(1.0, min=0.0, doc="global-norm clip; 0: none")
  z_loss: float = option(0.0, min=0.0)
  nonfinite: str = option("stop", choices=("stop", "skip"), doc="a non-finite loss/gradient: stop, or skip the update")
  log_every: int = option(50, min=1)
  progress: bool = option(True, doc="a progress bar on stderr")

  def check(self, config) -> list:
    if self.batch_size % self.grad_accum:
      return [f"train.batch_size={self.batch_size} must be divisible by train.grad_accum={self.grad_accum}"]
    return []

  @property
  def schedule_depends_on_steps(self) -> bool:
    return self.schedule == "cosine" and not self.decay_steps


def make_optimizer(t):
  """(optax optimizer, lr schedule) from the train group (a ConfigDict or TrainConfig)."""
  decay_steps = t.decay_steps or t.steps
  if t.schedule == "constant":
    schedule = optax.join_schedules([optax.linear_schedule(0.0, t.lr, t.warmup_steps), optax.constant_schedule(t.lr)],
                                    [t.warmup_steps])
  else:
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.lr, t.warmup_steps, max(decay_steps, t.warmup_steps + 1),
                                                  end_value=t.min_lr)
  # Decay matrices only: norms, biases (and other vectors) are left alone, as in nanoGPT and most LLM recipes.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  if getattr(t, "optimizer", "adamw") == "sgd":
    update = optax.chain(optax.add_decayed_weights(t.weight_decay, mask=decay_mask) if t.weight_decay
                         else optax.identity(), optax.sgd(schedule))
  else:
    update = optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask)
  optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip) if t.grad_clip else optax.identity(), update)
  return optimizer, schedule
