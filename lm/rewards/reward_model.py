"""A learned reward: a reward-model run (configs/reward_model.py, lm/objectives/reward_model.py) scores each
(prompt, response) with its reward head, on device, jitted, in batches of its eval.batch_size rows.

  objective.rewards="reward_model:1.0"  objective.reward_args.reward_model=<the reward-model run's directory>

The run is loaded once, when the policy-gradient objective is built (its newest readable checkpoint; another
model size than the policy's is fine). A response is scored as `prompt + response EOS`, as the model was trained.
"""
from lm import pairwise
from lm import runs
from lm.data import preferences
from lm.errors import UserError


def build(config, tokenizer, task):
  del tokenizer, task  # the reward model's own tokenizer reads the text
  run_dir = config.objective.reward_args.get("reward_model", "")
  if not run_dir:
    raise UserError("reward 'reward_model' needs objective.reward_args.reward_model: the directory of a reward-model "
                    "run (python launch.py --config=configs/reward_model.py --workdir=...)")
  rm_config = runs.load_config(run_dir)
  if rm_config.get("objective", {}).get("name") != "reward_model":
    raise UserError(f"objective.reward_args.reward_model={run_dir!r} is a "
                    f"{rm_config.get('objective', {}).get('name', '?')!r} run, not a reward model "
                    "(configs/reward_model.py)")
  setup, params = runs.load(run_dir, heads=("reward_head",))
  length = rm_config.objective.get("max_tokens", 0) or rm_config.model.max_len

  def score(prompts, responses):
    rows = preferences.answer_rows(setup.tokenizer, prompts, responses, length)
    with setup.use():
      return pairwise.eval_scores(setup, pairwise.jit_rewards, params, rows)[:, 0]

  return score
