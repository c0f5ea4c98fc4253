"""Evolution strategies on a task (lm/es.py): each step perturbs the params N times, every member answers the
step's prompts (greedy, or sampled), any registered reward scores the answers, and the optimizer moves the
params along sum_i f_i eps_i / (N sigma). No backward pass through the model and, with train.optimizer='sgd',
no optimizer moments: what ES needs per device is the params, one member's perturbed copy, and the estimate.

It is an objective, not a second loop: `batches` evaluates the population (members sharded over the mesh's
batch axes), `loss_fn` is a surrogate whose gradient is exactly minus the estimate, so checkpoints, resume,
evaluation and sharding are the loop's. Population noise is regenerated from (seed, step, member).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lm import chat
from lm import es
from lm import evaluate
from lm import objective as objective_lib
from lm import rewards as rewards_lib
from lm import sampling
from lm import sharding
from lm import tasks
from lm.errors import UserError
from lm.options import option
from lm.rl import common
from lm.rl import kl as kl_lib
from lm.rl import rollout as rollout_lib


@dataclasses.dataclass(frozen=True)
class Options(evaluate.TaskEval):
  task: str = option("addition", doc="lm/tasks/<task>.py: the step's prompts and the held-out test split")
  task_options: dict = option({})
  rewards: str = option("task:1.0", doc="weighted sum of lm/rewards/*.py, as in policy gradient")
  reward_args: dict = option({})
  population: int = option(32, min=2, doc="members per step (N)")
  antithetic: bool = option(True, doc="members in +eps / -eps pairs (N even)")
  sigma: float = option(1e-3, above=0.0, doc="noise scale")
  noise: str = option("full", choices=("full", "lowrank"), doc="lowrank: eps = A B^T / sqrt(rank) per matrix")
  rank: int = option(4, min=1)
  params: str = option("", doc="comma-separated globs of the params to perturb ('': all), e.g. 'layer_3/*'")
  prompts: int = option(16, min=1, doc="prompts every member answers per step")
  shaping: str = option("centered_rank", choices=("centered_rank", "zscore", "none"))
  temperature: float = option(0.0, min=0.0, doc="0: greedy answers (deterministic members)")
  max_new_tokens: int = option(8, min=1)
  # held-out metrics at eval time: evaluate.TaskEval's options, plus the KL of the policy to its start
  kl_prompts: int = option(64, min=0, doc="prompts for KL(policy || start) at eval, 16 samples each (0: skip)")

  def check(self, config) -> list:
    problems = super().check(config)
    if self.antithetic and self.population % 2:
      problems.append(f"objective.population={self.population} must be even with objective.antithetic=True")
    if config.train.batch_size != self.population:
      problems.append(f"train.batch_size={config.train.batch_size} must equal objective.population="
                      f"{self.population} (one batch row per member)")
    return problems


def build(setup) -> objective_lib.Objective:
  config, model, tokenizer = setup.config, setup.model, setup.tokenizer
  o = objective_lib.parse_options(Options, config)
  if jax.process_count() > 1:
    raise UserError("objective.name='es' runs in one process (its devices evaluate the population); "
                    "launch it without --num_processes")
  task = tasks.get(o.task, **o.task_options)
  score = rewards_lib.build(config, tokenizer, task)
  test = task.examples("test", o.eval_examples, seed=config.seed)
  probe = task.examples("train", 256, seed=config.seed)
  prompt_len = max(len(chat.prompt_ids(tokenizer, ex.prompt)) for ex in probe)
  noise_kw = {"kind": o.noise, "rank": o.rank}
  start = {}  # the starting params, for KL at eval (set once by on_start)

  def mask_of(params):
    return es.selection(params, o.params)

  @jax.jit
  def population_answers(params, keys, signs, tokens, positions, segment_ids, rng):
    """[N, B, T] answer tokens and masks of every member (vmapped; members sharded like batch rows)."""
    mask = mask_of(params)

    def member(key, sign):
      p = es.perturb(params, key, sign, o.sigma, mask=mask, **noise_kw)
      toks, _, valid, _ = sampling.generate_tokens(
          model, p, tokens, positions, segment_ids, rng, max_new_tokens=o.max_new_tokens,
          temperature=float(o.temperature), top_k=0, top_p=1.0, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
      return toks, valid

    return jax.vmap(member)(keys, signs)

  def batches(step, params):
    examples = task.examples("train", o.prompts, seed=config.seed * 1_000_003 + int(step))
    prompts = [chat.prompt_ids(tokenizer, ex.prompt) for ex in examples]
    tokens, positions, segment_ids = sampling.left_pad(prompts, tokenizer.pad_id, prompt_len)
    keys, signs = es.member_keys(config.seed, int(step), o.population, o.antithetic)
    members = sharding.global_batch({"keys": keys, "signs": signs}, setup.mesh)  # members over the batch axes
    toks, valid = jax.device_get(population_answers(
        params, members["keys"], members["signs"], jnp.asarray(tokens), jnp.asarray(positions),
        jnp.asarray(segment_ids),
        jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xA5), step)))
    texts = [ex.prompt for ex in examples]
    raw = np.zeros(o.population, np.float32)
    for i in range(o.population):
      answers = [chat.response_text(tokenizer, t, m) for t, m in zip(toks[i], valid[i])]
      raw[i] = score(texts, answers)[0].mean()
    shaped = es.shape_fitness(raw, o.shaping)
    local = sharding.local_rows(o.population)
    stats = {"fitness_mean": float(raw.mean()), "fitness_std": float(raw.std()), "fitness_max": float(raw.max()),
             "fitness_min": float(raw.min())}
    return objective_lib.Batch({"fitness": shaped[local], "keys": keys[local], "signs": signs[local],
                                "raw": raw[local]}, stats)

  def loss_fn(params, batch, rng):
    del rng
    value = -batch["raw"].mean()
    loss = es.surrogate_loss(params, batch["fitness"], batch["keys"], batch["signs"], value, o.sigma,
                             mask=mask_of(params), **noise_kw)
    return loss, {"fitness_shaped_abs": jnp.abs(batch["fitness"]).mean()}

  def evaluate_fn(params, step):
    out = o.metrics(model, params, tokenizer, task, test, config.seed, o.max_new_tokens)
    if o.kl_prompts and "params" in start:
      out["kl_to_start"] = kl_to_start(model, tokenizer, params, start["params"], test[:o.kl_prompts],
                                       jax.random.PRNGKey(config.seed + 7), o.max_new_tokens)
    return out

  def shapes():
    n = o.population
    return {"fitness": jax.ShapeDtypeStruct((n,), jnp.float32), "keys": jax.ShapeDtypeStruct((n, 2), jnp.uint32),
            "signs": jax.ShapeDtypeStruct((n,), jnp.float32), "raw": jax.ShapeDtypeStruct((n,), jnp.float32)}

  def on_start(params):
    start["params"] = jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), params)

  return objective_lib.Objective(loss_fn=loss_fn, batches=batches, batch_shapes=shapes, evaluate=evaluate_fn,
                                 on_start=on_start)


def kl_to_start(model, tokenizer, params, start, examples, rng, max_new_tokens: int, samples: int = 16) -> float:
  """KL(policy || start) per answer, estimated with k3 (unbiased, never negative) on answers sampled from the
  policy at T=1, summed over each answer's tokens and averaged: how far the update moved the model's behaviour."""
  prompts = [chat.prompt_ids(tokenizer, ex.prompt) for ex in examples for _ in range(samples)]
  r = rollout_lib.sample(model, params, prompts, rng, max_new_tokens, tokenizer)
  n = max_new_tokens
  now = common.token_logprobs(model, params, r["tokens"], r["positions"], r["segment_ids"], n=n)
  ref = common.token_logprobs(model, start, r["tokens"], r["positions"], r["segment_ids"], n=n)
  return float((np.asarray(kl_lib.estimate(now, ref, "k3")) * r["mask"]).sum(1).mean())
