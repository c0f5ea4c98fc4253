"""lm/dry_run.py plans the objective the config names: its loss, batch layout and extra heads compile without data
or weights."""
from lm import dry_run
from tests.conftest import tiny_config
from tests.rl.pg_helpers import pg_config


def test_pretrain_plan_counts_params_and_tokens():
  p = dry_run.plan(tiny_config())
  d, layers, v, t = 32, 2, 264, 32
  per_layer = 4 * d * d + 2 * 4 * d * d + 2 * d  # attention q/k/v/o, MLP up/down, two LayerNorm scales
  assert p["params"] == v * d + t * d + layers * per_layer + d
  assert p["tokens_per_step"] == 8 * 32 and p["compile_s"] > 0 and p["temp_bytes_per_device"] > 0


def test_policy_gradient_plans_compile_the_rollout_batch_and_ppo_value_head():
  base = dry_run.plan(tiny_config())["params"]
  grpo = dry_run.plan(pg_config("grpo"))
  ppo = dry_run.plan(pg_config("ppo"))
  assert grpo["params"] == base
  assert ppo["params"] == base + 32 + 1  # the value head: a d_model kernel and a bias
  assert ppo["compile_s"] > 0 and grpo["temp_bytes_per_device"] > 0


def test_preference_plans_compile_pair_batches_and_the_reward_head():
  from lm import objectives
  base = dry_run.plan(tiny_config())["params"]
  plans = {}
  for name in ("reward_model", "dpo"):
    config = tiny_config()
    config.objective = objectives.config(name, train_files="unread.jsonl", max_tokens=24)
    plans[name] = dry_run.plan(config)
  assert plans["reward_model"]["params"] == base + 32 + 1  # the reward head: a d_model kernel and a bias
  assert plans["dpo"]["params"] == base and plans["dpo"]["temp_bytes_per_device"] > 0
