"""Policy gradient on a verifiable task: REINFORCE, RLOO, GRPO or PPO (objective.algorithm, lm/rl/algorithms.py),
under a KL leash to the frozen starting policy.

One train-loop step is one rollout (lm/rl/rollout.py: sample G answers to each of the step's prompts, score them
with lm/rewards, reference log-probs, advantages), laid out for `updates_per_step` optimizer updates: epochs x
minibatches, each epoch a fresh permutation. The loss is lm/rl/losses.policy_loss over one of those slices.
"""
import dataclasses
import functools
import logging

import jax

from lm import evaluate
from lm import heads
from lm import objective as objective_lib
from lm import options
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
class Options(options.Group):
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
  # held-out task metrics at eval time
  eval_examples: int = option(500, min=1, doc="test problems for greedy exact match")
  pass_n: int = option(16, min=0, doc="samples per problem for pass@k and best-of-n (0: skip them)")
  pass_k: tuple = option((1, 16))
  pass_prompts: int = option(100, min=0, doc="the first this many test problems get pass_n samples each")
  eval_temperature: float = option(1.0, min=0.0)

  def check(self, config) -> list:
    problems = []
    rows, accum = config.train.batch_size, config.train.grad_accum
    if rows % self.group_size:
      problems.append(f"train.batch_size={rows} (rollout rows) must be a multiple of objective.group_size="
                      f"{self.group_size}")
    if rows % (self.minibatches * accum):
      problems.append(f"train.batch_size={rows} must divide into objective.minibatches={self.minibatches} x "
                      f"train.grad_accum={accum}")
    if self.ptx_coef and self.ptx_rows % accum:
      problems.append(f"objective.ptx_rows={self.ptx_rows} must divide by train.grad_accum={accum}")
    if self.kl_in == "loss" and self.kl_estimator == "k1" and (self.kl_coef or self.kl_target):
      problems.append("objective.kl_estimator='k1' with kl_in='loss' puts no leash on the policy: the gradient of "
                      "k1 = log pi - log ref is the score function, zero in expectation; use k3 or k2 in the loss, "
                      "or k1 with kl_in='reward'")
    if self.pass_n and max(self.pass_k, default=0) > self.pass_n:
      problems.append(f"objective.pass_k={self.pass_k} has k > objective.pass_n={self.pass_n} samples per prompt")
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
                                rows=config.train.batch_size, seed=config.seed, ptx=ptx)
  test = task.examples("test", o.eval_examples, seed=config.seed)

  def evaluate_fn(params, step):  # one fixed sampling key, so evals at different steps differ by the params only
    return evaluate.task_metrics(model, params, tokenizer, task, test, jax.random.PRNGKey(config.seed + 99),
                                 max_new_tokens=o.max_new_tokens, ks=o.pass_k, n=o.pass_n,
                                 pass_prompts=o.pass_prompts, temperature=o.eval_temperature)

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
