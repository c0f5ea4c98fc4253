"""Policy gradient on a verifiable task: REINFORCE, RLOO, GRPO or PPO (config.objective.algorithm), under a KL
leash to the frozen starting policy.

One train-loop step is one rollout. `batches(step, params)` samples G answers to each of the step's prompts with
the current params, scores them (lm/rewards), computes reference log-probs (and values, for PPO) and
advantages, and lays the rows out for `updates_per_step` optimizer updates: epochs x minibatches, each epoch a
fresh permutation. `loss_fn` is the surrogate (+ KL, value, entropy and pretraining terms) over one of those
slices. Prompts, samples and permutations are functions of (seed, step) and the adaptive KL coefficient is
checkpointed, so a resumed run replays exactly.

Rollout statistics travel to the logs as constant `stat_*` columns of the batch, which loss_fn reports.
"""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm import chat
from lm import evaluate as lm_evaluate
from lm import sharding
from lm import tasks
from lm.data import lm_batches
from lm.errors import UserError
from lm.objectives import Objective
from lm.objectives.pretrain import apply_lm, lm_loss
from lm import rewards as rewards_lib
from lm.rl import advantages as adv_lib
from lm.rl import kl as kl_lib
from lm.rl import losses
from lm.rl import rollout as rollout_lib

ALGORITHMS = ("reinforce", "rloo", "grpo", "ppo")


def sequence_advantages(scores, o):
  """[prompts, G] sequence rewards -> [prompts, G] advantages for the outcome-reward algorithms."""
  if o.algorithm == "reinforce":
    return adv_lib.batch_mean(scores) if o.baseline == "batch_mean" else adv_lib.leave_one_out(scores)
  if o.algorithm == "rloo":
    return adv_lib.leave_one_out(scores)
  if o.algorithm == "grpo":
    return adv_lib.group_normalised(scores, o.adv_scale)
  raise ValueError(o.algorithm)


def _values(model, params, tokens, positions, segment_ids, hidden, *, value: str, n: int):
  """PPO's value per response slot: a linear head on the policy's final hidden states (`hidden`), or a separate
  critic, which runs its own trunk (`hidden` unused)."""
  if value == "critic":
    hidden = rollout_lib.forward(model, params["critic"]["trunk"], tokens, positions, segment_ids, n)[2]
    head = params["critic"]["head"]
  else:
    head = params["value_head"]
  return hidden.astype(jnp.float32) @ head["kernel"] + head["bias"]


@functools.partial(jax.jit, static_argnames=("model", "n", "temperature", "value"))
def _score_rows(model, params, ref, tokens, positions, segment_ids, *, n, temperature, value):
  """Reference log-probs of the sampled rows, and for PPO (value != "") their values at rollout time."""
  ref_logp = rollout_lib.forward(model, ref, tokens, positions, segment_ids, n, temperature)[1]
  if not value:
    return ref_logp, jnp.zeros_like(ref_logp)
  hidden = None if value == "critic" else rollout_lib.forward(model, params, tokens, positions, segment_ids, n)[2]
  return ref_logp, _values(model, params, tokens, positions, segment_ids, hidden, value=value, n=n)


def validate(config):
  o, problems = config.objective, []
  choices = {"algorithm": ALGORITHMS, "baseline": ("batch_mean", "leave_one_out"),
             "adv_scale": ("group_std", "batch_std", "none"), "loss_agg": losses.AGGREGATIONS,
             "kl_estimator": kl_lib.ESTIMATORS, "kl_in": ("loss", "reward"), "truncated": ("keep", "mask", "penalty"),
             "value": ("head", "critic")}
  for key, allowed in choices.items():
    if o[key] not in allowed:
      problems.append(f"objective.{key}={o[key]!r} must be one of {', '.join(allowed)}")
  rows = config.train.batch_size
  if o.group_size < 2 or rows % o.group_size:
    problems.append(f"train.batch_size={rows} (rollout rows) must be a multiple of objective.group_size="
                    f"{o.group_size} >= 2")
  if o.epochs < 1 or o.minibatches < 1 or rows % (o.minibatches * config.train.grad_accum):
    problems.append(f"train.batch_size={rows} must divide into objective.minibatches={o.minibatches} x "
                    f"train.grad_accum={config.train.grad_accum}, with epochs >= 1")
  if o.ptx_coef and (o.ptx_rows < 1 or o.ptx_rows % config.train.grad_accum):
    problems.append(f"objective.ptx_rows={o.ptx_rows} must be >= 1 and divide by train.grad_accum")
  if problems:
    raise UserError("invalid policy-gradient config: " + "; ".join(problems))


def build(config, model, tokenizer) -> Objective:
  validate(config)
  o = config.objective
  task = tasks.get(o.task, **dict(o.task_options))
  score_fn = rewards_lib.build(config, tokenizer, task)
  ppo = o.algorithm == "ppo"
  clipped = o.algorithm in ("grpo", "ppo")
  rows, g, n_new = config.train.batch_size, o.group_size, o.max_new_tokens
  updates = o.epochs * o.minibatches
  temperature = float(o.temperature)
  controller = kl_lib.Controller(o.kl_coef, o.kl_target, o.kl_horizon)
  local = sharding.local_rows(rows * o.epochs)
  ptx = None
  if o.ptx_coef:
    text = lm_batches.split_tokens(config.data, config.data.train_split, tokenizer)
    ptx = lm_batches.RandomWindows(text, config.data.seq_len, o.ptx_rows * updates, config.seed + 1)
  held = {"ref": None, "last_end": None, "kl_coef_step": -1}
  base_key = jax.random.PRNGKey(config.seed)

  # ---- params: the frozen reference, and PPO's value head (on the trunk) or separate critic ----
  def init_params(rng, params):
    copy = lambda tree: jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), tree)
    held["ref"] = copy(params)  # its own buffers: the train step donates the policy's
    if not ppo:
      return params
    leaf = jax.tree.leaves(params)[0]
    rep = sharding.replicated(leaf.sharding.mesh) if isinstance(leaf.sharding, jax.sharding.NamedSharding) \
        else leaf.sharding
    head = {"kernel": jax.random.normal(rng, (model.cfg.d_model,)) * 0.02, "bias": jnp.zeros(())}
    head = jax.tree.map(lambda x: jax.device_put(x.astype(jnp.float32), rep), head)
    if o.value == "head":
      return {**params, "value_head": head}
    return {**params, "critic": {"trunk": copy(params), "head": head}}

  values_of = functools.partial(_values, model, value=o.value, n=n_new)

  # ---- generate -> score -> reference -> advantages, one rollout per step ----
  def batches(step, params):
    jax.block_until_ready(params)
    t0 = time.time()
    update_s = t0 - held["last_end"] if held["last_end"] is not None else 0.0
    examples = task.examples("train", rows // g, seed=config.seed * 1_000_003 + int(step))
    prompts = [chat.prompt_ids(tokenizer, ex.prompt) for ex in examples for _ in range(g)]
    key = jax.random.fold_in(jax.random.fold_in(base_key, 0x5EED), step)
    r = rollout_lib.rollout(model, params, prompts, key, n_new, tokenizer, temperature, o.top_k, o.top_p)
    ref_logp, values = jax.device_get(_score_rows(model, params, held["ref"], r["tokens"], r["positions"],
                                                  r["segment_ids"], n=n_new, temperature=temperature,
                                                  value=o.value if ppo else ""))
    mask = r["mask"].astype(np.float32)

    prompt_text = [ex.prompt for ex in examples for _ in range(g)]
    scores, parts = score_fn(prompt_text, rollout_lib.responses(tokenizer, r))
    if o.truncated == "penalty":
      scores = np.where(r["truncated"], scores + o.truncated_penalty, scores).astype(np.float32)
    kl_tok = {k: np.asarray(kl_lib.estimate(r["logprobs"], ref_logp, k)) * mask for k in kl_lib.ESTIMATORS}
    kl_seq = kl_tok[o.kl_estimator].sum(1)
    beta = controller.coef
    if ppo:
      token_rewards = np.zeros_like(mask)
      last = np.maximum(mask.sum(1).astype(int) - 1, 0)
      token_rewards[np.arange(rows), last] = scores
      if o.kl_in == "reward":
        token_rewards -= beta * kl_tok[o.kl_estimator]
      adv, returns = adv_lib.gae(jnp.asarray(token_rewards), jnp.asarray(values), jnp.asarray(mask), o.gamma, o.lam)
      if o.whiten:
        adv = adv_lib.whiten(adv, jnp.asarray(mask))
      adv, returns = np.asarray(adv), np.asarray(returns)
    else:
      seq = scores - beta * kl_seq if o.kl_in == "reward" else scores
      adv = np.asarray(sequence_advantages(jnp.asarray(seq.reshape(-1, g)), o)).reshape(-1)[:, None] * mask
      returns = np.zeros_like(mask)
    if o.truncated == "mask":
      mask = mask * ~r["truncated"][:, None]

    # adaptive KL: measured on this rollout, used from the next one on (kept in the checkpoint via get_state)
    if held["kl_coef_step"] < step:
      controller.update(float(kl_seq.mean()), 1)
      held["kl_coef_step"] = int(step)

    grouped = scores.reshape(-1, g)
    stats = {"reward_mean": scores.mean(), "reward_std": scores.std(),
             "zero_spread_frac": (grouped.max(1) == grouped.min(1)).mean(),
             "answer_len": r["mask"].sum(1).mean(), "truncated_frac": r["truncated"].mean(),
             **{f"rollout_kl_{k}": v.sum() / max(mask.sum(), 1.0) for k, v in kl_tok.items()},
             "rollout_kl_seq": kl_seq.mean(), "kl_coef": beta, **{f"reward_{k}": v.mean() for k, v in parts.items()}}
    batch = {"tokens": r["tokens"], "positions": r["positions"], "segment_ids": r["segment_ids"], "mask": mask,
             "old_logprobs": r["logprobs"], "ref_logprobs": ref_logp, "advantages": adv.astype(np.float32),
             "returns": returns.astype(np.float32), "old_values": values.astype(np.float32),
             "kl_coef": np.full((rows,), beta, np.float32)}
    # epochs x minibatches: each epoch one permutation of the rollout; the first slice is exactly on-policy
    order = np.concatenate([np.random.default_rng([config.seed, int(step), e]).permutation(rows)
                            for e in range(o.epochs)])
    out = {k: v[order] for k, v in batch.items()}
    out["fresh"] = (np.arange(len(order)) < rows // o.minibatches).astype(np.float32)
    if ptx is not None:
      out.update({f"ptx_{k}": v for k, v in ptx(step).items()})
    held["last_end"] = time.time()
    stats.update(time_rollout_s=held["last_end"] - t0, time_update_s=update_s)
    out.update({f"stat_{k}": np.full((len(order),), v, np.float32) for k, v in stats.items()})
    return {k: (v[local] if not k.startswith("ptx_") else v) for k, v in out.items()}

  # ---- the update: one slice of the rollout ----
  def loss_fn(params, batch, rng):
    tokens, positions, segment_ids = batch["tokens"], batch["positions"], batch["segment_ids"]
    mask = batch["mask"]
    logp_all, logp, hidden = rollout_lib.forward(model, params, tokens, positions, segment_ids, n_new, temperature)
    # On the first slice after sampling the policy is the sampler: use its own log-probs (stop-gradient) as
    # pi_old, so the ratio is exactly 1 rather than 1 up to the KV-cache's rounding.
    old = jnp.where(batch["fresh"][:, None] > 0, jax.lax.stop_gradient(logp), batch["old_logprobs"])
    clip = (o.clip_low, o.clip_high) if clipped else (None, None)
    pg_tok, ratio, clipped_tok = losses.policy_surrogate(logp, old, batch["advantages"], *clip)
    loss = losses.aggregate(pg_tok, mask, o.loss_agg, n_new)
    n_tok = jnp.maximum(mask.sum(), 1.0)
    tok_mean = lambda x: (x * mask).sum() / n_tok
    kl_now = {k: kl_lib.estimate(logp, batch["ref_logprobs"], k) for k in kl_lib.ESTIMATORS}
    metrics = {"pg_loss": loss, "clip_frac": tok_mean(clipped_tok), "ratio_mean": tok_mean(ratio),
               "ratio_max": jnp.max(jnp.where(mask > 0, ratio, -jnp.inf)),
               "ratio_min": jnp.min(jnp.where(mask > 0, ratio, jnp.inf)),
               **{f"kl_{k}": tok_mean(v) for k, v in kl_now.items()}}
    if o.kl_in == "loss":
      kl_term = losses.aggregate(batch["kl_coef"][:, None] * kl_now[o.kl_estimator], mask, o.loss_agg, n_new)
      loss = loss + kl_term
      metrics["kl_loss"] = kl_term
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    metrics["entropy"] = tok_mean(jax.lax.stop_gradient(entropy))
    if o.entropy_coef:
      loss = loss - o.entropy_coef * losses.aggregate(entropy, mask, o.loss_agg, n_new)
    if ppo:
      values = values_of(params, tokens, positions, segment_ids, hidden)
      v_tok, v_clipped = losses.value_loss(values, batch["old_values"], batch["returns"], o.value_clip)
      v_loss = tok_mean(v_tok)
      loss = loss + o.value_coef * v_loss
      metrics.update(value_loss=v_loss, value_clip_frac=tok_mean(v_clipped))
    if ptx is not None:
      ptx_batch = {k[4:]: v for k, v in batch.items() if k.startswith("ptx_")}
      ptx_loss = lm_loss(apply_lm(model, params, ptx_batch), ptx_batch)[0]
      loss = loss + o.ptx_coef * ptx_loss
      metrics["ptx_loss"] = ptx_loss
    metrics.update({k[5:]: batch[k].mean() for k in batch if k.startswith("stat_")})
    return loss, metrics

  # ---- held-out task metrics: greedy exact match, pass@k, best-of-n (lm/evaluate.py) ----
  test = task.examples("test", int(o.eval_examples), seed=config.seed)

  def evaluate(params, step):  # one fixed sampling key, so evals at different steps differ by the params only
    return lm_evaluate.task_metrics(model, params, tokenizer, task, test, jax.random.PRNGKey(config.seed + 99),
                                    max_new_tokens=n_new, ks=tuple(o.pass_k), n=o.pass_n,
                                    pass_prompts=o.pass_prompts, temperature=o.eval_temperature)

  def set_state(s):
    controller.coef = float(s["kl_coef"])
    held["kl_coef_step"] = int(s["kl_coef_step"])

  return Objective(loss_fn=loss_fn, batches=batches, evaluate=evaluate, init_params=init_params,
                   get_state=lambda: {"kl_coef": controller.coef, "kl_coef_step": held["kl_coef_step"]},
                   set_state=set_state, updates_per_step=updates)

