"""Policy gradient on a verifiable task: REINFORCE, RLOO, GRPO or PPO (objective.algorithm, lm/rl/algorithms.py),
under a KL leash to the frozen starting policy.

One train-loop step is one rollout (lm/rl/rollout.py: sample G answers to each of the step's prompts, score them
with lm/rewards, reference log-probs, advantages), laid out for `updates_per_step` optimizer updates: epochs x
minibatches, each epoch a fresh permutation. The loss is lm/rl/losses.policy_loss over one of those slices.
"""
import dataclasses
import functools
import logging


from lm import evaluate
from lm import heads
from lm import objective as objective_lib
from lm import rewards as rewards_lib
from lm import sharding
from lm import tasks
from lm.data import lm_batches
from lm.options import option
from lm.rl import algorithms
from lm.rl import kl as kl_lib
from lm.rl import losses
from lm.rl import rollout as rollout_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Options(evaluate.TaskEval):
  algorithm: str = option("grpo", choices=tuple(algorithms.ALGORITHMS))
  task: str = option("addition", doc="lm/tasks/<task>.py: prompts (its train split) and the held-out test split")
  task_options: dict = option({}, doc="the task's make(**options)")
  rewards: str = option("task:1.0", doc="weighted sum of lm/rewards/*.py, e.g. 'task:1.0,format:0.1,length:0.01'")
  reward_args: dict = option({}, doc="options rewards read, e.g. format_pattern, length_target")
  group_size: int = option(8, min=2, doc="G samples per prompt")
  max_new_tokens: int = option(8, min=1, doc="prompt + answer must fit model.max_len")
  temperature: float = option(1.0, above=0.0)
  top_k: int = option(0, min=0)
  top_p: float = option(1.0, above=0.0, max=1.0)
  truncated: str = option("keep", choices=("keep", "mask", "penalty"),
                          doc="answers without EOS: keep, mask (no gradient), or penalty (add truncated_penalty)")
  truncated_penalty: float = option(-1.0)
  share_prompts: bool = option(False, doc="the update and the reference pass run each prompt once for its G "
                                          "samples (answers attend to its KV cache) and minibatches hold whole "
                                          "groups: the same loss with fewer tokens through the model, but other "
                                          "roundings, so a run drifts from one without it")
  # advantages
  baseline: str = option("leave_one_out", choices=("batch_mean", "leave_one_out"), doc="reinforce's baseline")
  adv_scale: str = option("group_std", choices=("group_std", "batch_std", "none"), doc="grpo; none: Dr. GRPO")
  loss_agg: str = option("seq_mean_token_mean", choices=losses.AGGREGATIONS)
  clip_low: float = option(0.2, min=0.0, doc="grpo/ppo: ratio clipped to [1 - clip_low, 1 + clip_high]")
  clip_high: float = option(0.2, min=0.0)
  epochs: int = option(1, min=1, doc="optimizer passes over each rollout")
  minibatches: int = option(1, min=1, doc="updates per pass")
  # KL to the frozen reference (the starting params)
  kl_coef: float = option(0.02, min=0.0)
  kl_estimator: str = option("k3", choices=kl_lib.ESTIMATORS)
  kl_in: str = option("loss", choices=("loss", "reward"))
  kl_target: float = option(0.0, min=0.0, doc="> 0: adaptive coefficient steering the per-sequence KL to it")
  kl_horizon: float = option(10000.0, above=0.0, doc="adaptive KL: samples over which an error of 20% moves the "
                                                     "coefficient by 20% (TRL/OpenRLHF's horizon)")
  # PPO
  value: str = option("head", choices=("head", "critic"), doc="a value head on the policy trunk, or a critic copy")
  value_coef: float = option(0.5, min=0.0)
  value_clip: float = option(0.2, min=0.0)
  gamma: float = option(1.0, min=0.0, max=1.0)
  lam: float = option(0.95, min=0.0, max=1.0)
  whiten: bool = option(True)
  entropy_coef: float = option(0.0, min=0.0)
  # PPO-ptx: next-token loss on pretraining text (config.data), ptx_rows rows per update
  ptx_coef: float = option(0.0, min=0.0)
  ptx_rows: int = option(8, min=1)
  # a warning when most groups carry no signal (every sample of a prompt scored the same)
  zero_spread_warn: float = option(0.9, min=0.0, max=1.0, doc="warn when the zero-spread fraction averaged over "
                                                               "zero_spread_window rollouts exceeds this (1: never)")
  zero_spread_window: int = option(20, min=1)
  # (held-out task metrics at eval time: evaluate.TaskEval's options)

  def check(self, config) -> list:
    problems = super().check(config)
    rows, accum = config.train.batch_size, config.train.grad_accum
    if rows % self.group_size:
      problems.append(f"train.batch_size={rows} (rollout rows) must be a multiple of objective.group_size="
                      f"{self.group_size}")
    if rows % (self.minibatches * accum):
      problems.append(f"train.batch_size={rows} must divide into objective.minibatches={self.minibatches} x "
                      f"train.grad_accum={accum}")
    if self.share_prompts and (rows // (self.minibatches * accum)) % self.group_size:
      problems.append(f"objective.share_prompts needs whole groups in every update slice: train.batch_size={rows} / "
                      f"(objective.minibatches={self.minibatches} x train.grad_accum={accum}) must be a multiple of "
                      f"objective.group_size={self.group_size}")
    if self.ptx_coef and self.ptx_rows % accum:
      problems.append(f"objective.ptx_rows={self.ptx_rows} must divide by train.grad_accum={accum}")
    if self.kl_in == "loss" and self.kl_estimator == "k1" and (self.kl_coef or self.kl_target):
      problems.append("objective.kl_estimator='k1' with kl_in='loss' puts no leash on the policy: the gradient of "
                      "k1 = log pi - log ref is the score function, zero in expectation; use k3 or k2 in the loss, "
                      "or k1 with kl_in='reward'")
    return problems


def build(setup) -> objective_lib.Objective:
  config, model, tokenizer = setup.config, setup.model, setup.tokenizer
  o = objective_lib.parse_options(Options, config)
  if o.kl_in == "reward" and o.kl_estimator != "k1" and (o.kl_coef or o.kl_target):
    log.warning("objective.kl_estimator=%r with kl_in='reward' biases the gradient: REINFORCE on a KL reward is "
                "the KL's gradient only for k1 = log pi - log ref (k2/k3 depend on the policy beyond the score "
                "function); k1 is the usual choice there", o.kl_estimator)
  task = tasks.get(o.task, **o.task_options)
  algorithm = algorithms.get(o.algorithm)
  ptx = None
  if o.ptx_coef:
    ptx_rows = o.ptx_rows * o.epochs * o.minibatches

    @functools.cache
    def windows():
      text = lm_batches.split_tokens(config.data, config.data.train_split, tokenizer)
      return lm_batches.RandomWindows(text, config.data.seq_len, ptx_rows, config.seed + 1)

    ptx = lambda step: windows()(step)
  rollout = rollout_lib.Rollout(model, tokenizer, task, rewards_lib.build(config, tokenizer, task), o,
                                rows=config.train.batch_size, seed=config.seed, mesh=setup.mesh, ptx=ptx)
  test = task.examples("test", o.eval_examples, seed=config.seed)

  def evaluate_fn(params, step):
    return o.metrics(model, params, tokenizer, task, test, config.seed, o.max_new_tokens)

  return objective_lib.Objective(
      loss_fn=functools.partial(losses.policy_loss, model=model, o=o),
      batches=rollout,
      batch_shapes=lambda: rollout.shapes(config.data.seq_len),
      evaluate=evaluate_fn,
      init_params=functools.partial(value_params, model=model, value=o.value) if algorithm.critic else None,
      on_start=rollout.set_reference,
      get_state=rollout.state_dict, set_state=rollout.load_state_dict,
      updates_per_step=o.epochs * o.minibatches)


def value_params(rng, params, *, model, value: str):
  """PPO's value head (on the policy trunk) or a separate critic (a copy of the trunk with its own head)."""
  head = heads.init(rng, params, model.cfg.d_model)
  if value == "head":
    return {**params, "value_head": head}
  return {**params, "critic": {"trunk": sharding.frozen_copy(params), "head": head}}
