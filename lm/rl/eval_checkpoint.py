"""Score a checkpoint the way a policy-gradient run's evals do (task metrics + held-out bits per byte), e.g. the
starting point of a run, which the train loop never evaluates:

python -m lm.rl.eval_checkpoint configs/pg_addition.py runs/sft_addition_w4 [key=value ...]
"""
import importlib.util
import json
import sys

from lm import config as config_lib
from lm import evaluate
from lm import objectives
from lm import sharding
from lm import train
from lm.data import lm_batches


def _parse(item: str) -> tuple:
  """"a.b=value" -> ("a.b", value), the value parsed as JSON when it can be."""
  key, _, value = item.partition("=")
  try:
    return key, json.loads(value)
  except json.JSONDecodeError:
    return key, value


def main(config_path: str, run_dir: str, *overrides):
  spec = importlib.util.spec_from_file_location("pg_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = config_lib.override(module.get_config(), dict(_parse(item) for item in overrides))
  setup = train.Setup(config)
  with sharding.use(setup.mesh, setup.rules):
    params = setup.load_params(run_dir)
    objective = objectives.get(config.objective.name).build(config, setup.model, setup.tokenizer)
    tokens = lm_batches.split_tokens(config.data, config.data.eval_split, setup.tokenizer)
    batches = lm_batches.eval_batches(tokens, config.data.seq_len, config.eval.batch_size, config.eval.max_batches)
    result = evaluate.bits_per_byte(setup.model, params, batches, setup.tokenizer, setup.mesh)
    result.update(objective.evaluate(params, 0))
  print(json.dumps({"checkpoint": run_dir, **result}))


if __name__ == "__main__":
  main(*sys.argv[1:])
