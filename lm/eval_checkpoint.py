"""Evaluate any run's checkpoint on any task: held-out bits per byte on the run's data, and a task's greedy exact
match, pass@k and best-of-n on its held-out problems. The function is `evaluate_run`; the CLI is

  python launch.py --config=configs/eval.py --config.checkpoint=runs/sft_addition_mix        # the run's own task
  python launch.py --config=configs/eval.py --config.checkpoint=runs/shakespeare --config.task=addition \
      --config.task_options=digits=4,pad=true,width=4

It prints one JSON line. Sampling uses the key policy-gradient evals use (seed + 99), so the numbers equal a
policy-gradient run's evals of the same params.
"""
import json

import jax

from lm import evaluate
from lm import runs
from lm import tasks
from lm.data import lm_batches
from lm.errors import UserError


def parse_options(spec) -> dict:
  """"digits=3,pad=true" (values read as JSON when they parse) or a dict -> dict."""
  if isinstance(spec, dict):
    return dict(spec)
  out = {}
  for part in filter(None, (p.strip() for p in str(spec or "").split(","))):
    key, eq, value = part.partition("=")
    if not eq or not key.strip():
      raise UserError(f"task_options: {part!r} is not key=value (write e.g. digits=4,pad=true)")
    try:
      out[key.strip()] = json.loads(value)
    except json.JSONDecodeError:
      out[key.strip()] = value
  return out


def evaluate_run(run_dir: str, task: str = "", task_options=None, *, examples: int = 500, max_new_tokens: int = 0,
                 pass_n: int = 16, pass_k=(1, 16), pass_prompts: int = 100, temperature: float = 1.0,
                 seed: int = 0, bits_per_byte: bool = True) -> dict:
  """Metrics of `run_dir`'s newest readable checkpoint. `task` "" means the run's own objective.task, whose
  task_options `task_options` (a dict or "k=v,...") then updates; another task starts from its defaults."""
  setup, params = runs.load(run_dir)
  config, objective = setup.config, setup.config.get("objective", {})
  own = objective.get("task", "") if objective else ""
  name = task or own
  opts = dict(objective.get("task_options", {}) or {}) if name == own and own else {}
  opts.update(parse_options(task_options))
  result = {"checkpoint": run_dir}
  with setup.use():
    if bits_per_byte:
      tokens = lm_batches.split_tokens(config.data, config.data.eval_split, setup.tokenizer)
      batches = lm_batches.eval_batches(tokens, config.data.seq_len, config.eval.batch_size, config.eval.max_batches)
      result.update(evaluate.bits_per_byte(setup.model, params, batches, setup.tokenizer, setup.mesh))
    if name:
      t = tasks.get(name, **opts)
      n_new = max_new_tokens or int(objective.get("max_new_tokens", 8) if objective else 8)
      test = t.examples("test", examples, seed=seed)
      result.update({"task": name, "task_options": opts})
      result.update(evaluate.task_metrics(setup.model, params, setup.tokenizer, t, test,
                                          jax.random.PRNGKey(seed + 99), max_new_tokens=n_new, ks=tuple(pass_k),
                                          n=pass_n, pass_prompts=pass_prompts, temperature=temperature))
  return result


def run(config):
  if not config.checkpoint:
    raise UserError("--config.checkpoint is required: the run directory to evaluate")
  result = evaluate_run(config.checkpoint, config.task, config.task_options, examples=config.examples,
                        max_new_tokens=config.max_new_tokens, pass_n=config.pass_n, pass_k=tuple(config.pass_k),
                        pass_prompts=config.pass_prompts, temperature=config.temperature, seed=config.seed,
                        bits_per_byte=config.bits_per_byte)
  print(json.dumps(result))
  return result
