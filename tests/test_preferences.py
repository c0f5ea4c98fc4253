"""Preference data (JSONL through TFDS, rows), the simulated annotator, a reward model trained on its
preferences, and that reward model as the policy-gradient reward."""
import json

import jax
import numpy as np
import pytest

from lm.data import preferences
from lm.errors import UserError


def write_pairs(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_jsonl_pairs_round_trip_through_tfds(tmp_path):
  lines = [preferences.to_line("1+1=", "2", "3", annotator="ada"), "",
           json.dumps({"prompt": "é?", "chosen": "ü", "rejected": "<script>x</script>", "margin": 0.5, "extra": 1})]
  path = write_pairs(tmp_path / "p.jsonl", lines)
  records = preferences.source({"train": [path]}, str(tmp_path / "tfds"))["train"]
  got = sorted((records[i] for i in range(len(records))), key=lambda r: r["where"])  # TFDS stores them shuffled
  assert [(r["prompt"], r["chosen"], r["rejected"], r["annotator"], r["margin"]) for r in got] == [
      ("1+1=", "2", "3", "ada", 0.0), ("é?", "ü", "<script>x</script>", "", 0.5)]
  assert got[1]["where"] == f"{path}:3"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "chosen": "b"', "not valid JSON"),
    ('{"prompt": "a", "chosen": "b"}', "rejected missing or not a string"),
    ('{"prompt": "a", "chosen": "same", "rejected": "same"}', "chosen and rejected are the same answer"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}', "margin must be a finite number"),
    ('["a", "b"]', "expected a JSON object"),
])
def test_bad_lines_are_one_error_naming_file_and_line(tmp_path, line, message):
  path = write_pairs(tmp_path / "p.jsonl", [preferences.to_line("p", "a", "b"), line])
  with pytest.raises(UserError) as e:
    preferences.source({"train": [path]}, str(tmp_path / "tfds"))
  assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "tfds").exists()  # checked before TFDS writes anything


def test_rows_pad_mask_and_refuse_a_prompt_longer_than_the_context():
  from lm import tokenizer as tokenizer_lib
  tok = tokenizer_lib.get()
  recs = [{"prompt": "ab", "chosen": "c", "rejected": "defg", "margin": 1.0, "where": "f:1"}]
  rows, counts, index = preferences.rows(tok, recs, 12)
  # BOS <user> a b <assistant> | answer EOS, right-padded; the mask covers the answer and its EOS
  assert rows["tokens"][0, 0, :7].tolist() == [tok.bos_id, tok.role_ids["user"], 97, 98, tok.role_ids["assistant"],
                                               99, tok.eos_id]
  assert rows["mask"][0].sum(-1).tolist() == [2, 5] and rows["segment_ids"][0].sum(-1).tolist() == [7, 10]
  assert (rows["tokens"][0, 0, 7:] == tok.pad_id).all() and rows["margin"].tolist() == [1.0]
  assert counts == {"pairs": 1, "truncated": 0, "dropped": 0} and index.tolist() == [0]
  rows, counts, _ = preferences.rows(tok, recs + [{**recs[0], "chosen": "x" * 20, "where": "f:2"}], 12, "drop")
  assert len(rows["weight"]) == 1 and counts["dropped"] == 1
  with pytest.raises(UserError, match=r"^f:3: the prompt is 13 tokens .* objective.max_tokens=12"):
    preferences.rows(tok, recs + [{**recs[0], "prompt": "y" * 10, "where": "f:3"}], 12)


def test_annotator_bradley_terry_choices_and_utility():
  from lm import simulated_annotator
  from lm import tasks
  task = tasks.get("addition", digits=2)
  exact = simulated_annotator.Annotator(task)
  u = lambda a: exact.utility("12+34=", a)
  assert u("46") > u("45") > u("99") and u("45") > u("4500")  # correct > near miss > far miss; shorter preferred
  assert exact.prob_first(1.0, 0.5) == 1.0 and exact.prob_first(0.5, 1.0) == 0.0 and exact.prob_first(1, 1) == 0.5
  noisy = simulated_annotator.Annotator(task, noise=0.25)
  rng = np.random.default_rng(0)
  n = 20000
  first = sum(noisy.judge("12+34=", "45", "99", rng)[0] == "45" for _ in range(n)) / n
  p = 1 / (1 + np.exp(-(u("45") - u("99")) / 0.25))
  assert abs(first - p) < 4 * np.sqrt(p * (1 - p) / n)  # the Bradley-Terry probability, within 4 standard errors
  assert simulated_annotator.win_rate(exact, ["12+34="] * 3, ["46", "45", "10"], ["45", "45", "46"]) == 0.5


def synthetic_pairs(n: int, seed: int) -> list:
  """Judged pairs of wrong answers of different lengths to 2-digit sums: what the annotator's utility ranks is
  mostly length (its style term), which a tiny model learns in a few steps, unlike addition."""
  from lm import simulated_annotator
  from lm import tasks
  task = tasks.get("addition", digits=2)
  annotator = simulated_annotator.Annotator(task, noise=0.0)
  rng = np.random.default_rng(seed)
  lines = []
  for ex in task.examples("train" if seed == 0 else "test", n, seed=seed):
    la, lb = rng.choice(np.arange(1, 9), 2, replace=False)
    a, b = ("".join(rng.choice(list("0123456789"), k)) for k in (la, lb))
    lines.append(preferences.to_line(ex.prompt, *annotator.judge(ex.prompt, a, b, rng)))
  return lines


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, shakespeare):
  """A tiny reward model trained in-process on 512 zero-noise simulated pairs (100 steps)."""
  from lm import objectives
  from lm import train
  from tests.conftest import tiny_config
  d = tmp_path_factory.mktemp("rm")
  train_path = write_pairs(d / "train.jsonl", synthetic_pairs(512, 0))
  eval_path = write_pairs(d / "eval.jsonl", synthetic_pairs(128, 1))
  config = tiny_config(**{"train.steps": 100, "train.batch_size": 16, "train.lr": 3e-3, "train.warmup_steps": 10,
                          "eval.every": 100, "checkpoint.every": 100})
  config.objective = objectives.config("reward_model", train_files=train_path, eval_files=eval_path, max_tokens=20)
  result = train.run(config, str(d / "run"))
  return d / "run", result


def test_reward_model_ranks_held_out_zero_noise_preferences(trained_rm):
  _, result = trained_rm
  # chance is 0.5; the style term alone decides most of these pairs, and 100 steps of a 2-layer model learn it
  assert result["pair_accuracy"] >= 0.8, result
  assert result["eval_pairs_pairs"] == 128


def test_learned_reward_scores_in_batches_as_the_model_does(trained_rm):
  from lm import rewards
  from lm import runs
  from lm import tasks
  from tests.conftest import tiny_config
  run_dir, _ = trained_rm
  config = tiny_config(**{"eval.batch_size": 4})
  config.objective = {"rewards": "reward_model:1.0,simulated:0", "reward_args": {"reward_model": str(run_dir)}}
  task = tasks.get("addition", digits=2)
  score = rewards.build(config, None, task)
  prompts, answers = ["12+34="] * 5 + ["1+1="], ["4", "46", "4600", "12345678", "", "2"]
  total, parts = score(prompts, answers)
  np.testing.assert_allclose(total, parts["reward_model"], rtol=1e-6)  # simulated weighs 0: logged, not added
  # an answer's score does not depend on its batch (chunks of the RM's eval.batch_size rows, the last padded)
  alone = np.concatenate([score([p], [a])[1]["reward_model"] for p, a in zip(prompts, answers)])
  np.testing.assert_allclose(parts["reward_model"], alone, rtol=1e-5, atol=1e-6)
  # and it is the reward head on an unpadded forward pass of `prompt answer EOS`
  from lm import chat
  setup, params = runs.load(str(run_dir), heads=("reward_head",))
  ids = np.concatenate([chat.prompt_ids(setup.tokenizer, "12+34="), chat.answer_ids(setup.tokenizer, "46")])[None]
  _, _, hidden = jax.jit(setup.model.apply, static_argnames="return_hidden")({"params": params}, ids,
                                                                             return_hidden=True)
  head = jax.device_get(params["reward_head"])
  assert parts["reward_model"][1] == pytest.approx(float(np.asarray(hidden)[0, -1] @ head["kernel"] + head["bias"]),
                                                   rel=1e-4, abs=1e-5)
  assert parts["reward_model"][0] > parts["reward_model"][3]  # what it learned: short beats long


def test_policy_gradient_rollouts_score_with_the_learned_reward(trained_rm):
  from lm import objectives
  from lm.setup import Setup
  from tests.conftest import tiny_config
  run_dir, _ = trained_rm
  config = tiny_config(**{"train.batch_size": 8})
  config.objective = objectives.config(
      "policy_gradient", task="addition", task_options={"digits": 2}, rewards="reward_model:1.0,simulated:0",
      reward_args={"reward_model": str(run_dir)}, group_size=4, max_new_tokens=6)
  setup = Setup(config)
  with setup.use():
    objective = objectives.build(setup)
    params = setup.init_params(jax.random.PRNGKey(0))
    objective.on_start(params)
    stats = objective.batches(0, params).stats
  assert stats["reward_mean"] == pytest.approx(stats["reward_reward_model"], rel=1e-5)  # the learned reward counts
  assert stats["reward_simulated"] < 0  # the hidden utility is logged beside it (random answers: no credit)


def test_reward_model_run_is_required(tmp_path):
  from lm import rewards
  from tests.conftest import tiny_config
  config = tiny_config()
  config.objective = {"rewards": "reward_model:1.0", "reward_args": {}}
  with pytest.raises(UserError, match="needs objective.reward_args.reward_model"):
    rewards.build(config, None, None)
  (tmp_path / "config.json").write_text(json.dumps({"objective": {"name": "pretrain"}}))
  config.objective.reward_args = {"reward_model": str(tmp_path)}
  with pytest.raises(UserError, match="is a 'pretrain' run, not a reward model"):
    rewards.build(config, None, None)


def test_a_lora_reward_model_scores_with_its_adapters(tmp_path, shakespeare):
  """A reward model trained as LoRA adapters + head loads as a reward with all three (base, adapters, head)."""
  from lm import chat
  from lm import lora
  from lm import objectives
  from lm import rewards
  from lm import runs
  from lm import train
  from tests.conftest import tiny_config
  path = write_pairs(tmp_path / "train.jsonl", synthetic_pairs(32, 0))
  config = tiny_config(**{"train.steps": 2, "train.batch_size": 8, "train.lr": 1e-2, "eval.every": 2,
                          "checkpoint.every": 2, "lora.rank": 4, "lora.targets": "all"})
  config.objective = objectives.config("reward_model", train_files=path, max_tokens=20)
  train.run(config, str(tmp_path / "run"))
  config.objective = {"rewards": "reward_model:1.0", "reward_args": {"reward_model": str(tmp_path / "run")}}
  got = rewards.build(config, None, None)(["12+34="], ["46"])[1]["reward_model"][0]
  setup, params = runs.load(str(tmp_path / "run"), heads=("reward_head",))
  assert sorted(params) == ["base", "lora", "reward_head"]
  ids = np.concatenate([chat.prompt_ids(setup.tokenizer, "12+34="), chat.answer_ids(setup.tokenizer, "46")])[None]
  head = jax.device_get(params["reward_head"])
  score = lambda p: float(np.asarray(jax.jit(setup.base_model.apply, static_argnames="return_hidden")(
      {"params": p}, ids, return_hidden=True)[2])[0, -1] @ head["kernel"] + head["bias"])
  assert got == pytest.approx(score(lora.model_params(params, setup.lora.scale)), rel=1e-4, abs=1e-5)
  assert got != pytest.approx(score(params["base"]), rel=1e-4, abs=1e-5)  # the adapters moved it
