"""GRPO on 4-digit addition, starting from the SFT run (runs/sft_addition_mix, configs/sft_addition.py).

python launch.py --config=configs/pg_addition.py --workdir=runs/pg_addition
One train step is one rollout of train.batch_size rows (batch_size / group_size prompts x group_size samples).
Other algorithms: configs/pg_addition_{reinforce,rloo,ppo}.py (same prompts, rollouts and budget).
SFT wrote 3-digit problems (plus 5% 4-digit ones) at width 4 ("0023+0456=" -> "00479"), so it starts at 23.0%
greedy exact on held-out 4-digit problems. Measured (experiments/PG_NOTES.md): 900 rollouts take it to 51.4%.
"""
import ml_collections

from configs import base


def objective(algorithm: str = "grpo") -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.name = "policy_gradient"
  o.algorithm = algorithm  # reinforce | rloo | grpo | ppo
  o.task = "addition"
  o.task_options = ml_collections.ConfigDict(dict(digits=4, pad=True, width=4))  # the SFT run's fixed width
  o.rewards = "task:1.0"  # weighted sum of lm/rewards/*.py, e.g. "task:1.0,format:0.1,length:0.01"
  o.reward_args = ml_collections.ConfigDict(dict(format_pattern=r"[0-9]+", length_target=5))
  o.group_size = 8  # G samples per prompt
  o.max_new_tokens = 8  # prompt (13 tokens for 4+4 digits) + answer must fit model.max_len
  o.temperature = 1.0
  o.top_k = 0
  o.top_p = 1.0
  o.truncated = "keep"  # keep | mask (no gradient from truncated answers) | penalty (add truncated_penalty)
  o.truncated_penalty = -1.0
  # advantages
  o.baseline = "leave_one_out"  # reinforce: batch_mean | leave_one_out
  o.adv_scale = "group_std"  # grpo: group_std | batch_std | none (Dr. GRPO)
  o.loss_agg = "seq_mean_token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm
  o.clip_low = 0.2  # grpo/ppo: ratio clipped to [1 - clip_low, 1 + clip_high]
  o.clip_high = 0.2
  o.epochs = 1  # optimizer passes over each rollout
  o.minibatches = 1  # updates per pass
  # KL to the frozen reference (the starting params)
  o.kl_coef = 0.02
  o.kl_estimator = "k3"  # k1 | k2 | k3
  o.kl_in = "loss"  # loss | reward
  o.kl_target = 0.0  # > 0: adaptive coefficient steering the per-sequence KL to this target
  o.kl_horizon = 10000.0
  # PPO
  o.value = "head"  # head (on the policy trunk) | critic (a separate copy of the trunk)
  o.value_coef = 0.5
  o.value_clip = 0.2
  o.gamma = 1.0
  o.lam = 0.95
  o.whiten = True
  o.entropy_coef = 0.0
  # PPO-ptx: next-token loss on pretraining text (config.data), ptx_rows rows per update
  o.ptx_coef = 0.0
  o.ptx_rows = 8
  # held-out task metrics at eval time
  o.eval_examples = 500  # test problems for greedy exact match
  o.pass_n = 16  # samples per problem for pass@k and best-of-n (0: skip them)
  o.pass_k = (1, 16)
  o.pass_prompts = 100  # the first this many test problems get pass_n samples each
  o.eval_temperature = 1.0
  return o


def get_config(algorithm: str = "grpo"):
  c = base.get_config()
  c.objective = objective(algorithm)
  c.checkpoint.init_from = "runs/sft_addition_mix"
  c.train.update(steps=900, batch_size=64, lr=1e-4, min_lr=1e-4, warmup_steps=10, schedule="constant",
                 weight_decay=0.0, grad_clip=1.0, log_every=10)
  c.eval.update(every=100, sample_tokens=0)
  c.checkpoint.update(every=100, keep=2)
  return c
