"""One policy-gradient rollout per train-loop step: sample -> score -> reference log-probs (and values) ->
advantages -> a RolloutBatch of this process's rows, plus host-side statistics for the log.

`Rollout` owns what outlives a step: the frozen reference params, the KL controller (checkpointed through
`state_dict`) and the timer between rollouts. Prompts, samples and minibatch permutations are functions of
(seed, step), so a resumed run replays exactly.
"""
import collections
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lm import chat
from lm import objective as objective_lib
from lm import sampling
from lm import sharding
from lm.data import lm_batches
from lm.rl import advantages as adv_lib
from lm.rl import algorithms
from lm.rl import common
from lm.rl import kl as kl_lib


def sample(model, params, prompts: list, rng, max_new_tokens: int, tokenizer, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, prompt_len: int | None = None) -> dict:
  """prompts: list of 1-D prompt token arrays (already repeated G times) -> numpy rows: `tokens`, `positions`,
  `segment_ids` [B, P + N]; for the N response slots `mask` (True up to and including EOS, so nothing after EOS
  ever counts) and `logprobs` (under the sampling policy); `truncated` [B] (no EOS within N tokens)."""
  out = jax.device_get(sampling.generate(model, params, prompts, rng, max_new_tokens, temperature=temperature,
                                         top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                         prompt_len=prompt_len))
  mask = np.asarray(out["mask"], bool)
  last = out["prompt_positions"][:, -1:]
  return {
      "tokens": np.concatenate([out["prompt_tokens"], out["tokens"]], 1).astype(np.int32),
      "positions": np.concatenate([out["prompt_positions"], last + 1 + np.arange(max_new_tokens)], 1).astype(np.int32),
      "segment_ids": np.concatenate([out["prompt_segment_ids"], mask], 1).astype(np.int32),
      "mask": mask,
      "logprobs": np.asarray(out["logprobs"], np.float32),
      "truncated": np.asarray(out["truncated"], bool),
  }


def responses(tokenizer, rows: dict) -> list:
  return [chat.response_text(tokenizer, t, m) for t, m in zip(rows["tokens"][:, -rows["mask"].shape[1]:],
                                                               rows["mask"])]


@functools.partial(jax.jit, static_argnames=("model", "n", "temperature", "value"))
def _score_rows(model, params, ref, tokens, positions, segment_ids, *, n, temperature, value):
  """Reference log-probs of the sampled rows, and for PPO (value != "") their values at rollout time."""
  ref_logp = common.forward(model, ref, tokens, positions, segment_ids, n, temperature)[1]
  if not value:
    return ref_logp, jnp.zeros_like(ref_logp)
  hidden = None if value == "critic" else common.forward(model, params, tokens, positions, segment_ids, n)[2]
  return ref_logp, common.values(model, params, tokens, positions, segment_ids, hidden, value=value, n=n)


class Rollout:
  """Makes step k's RolloutBatch from the current params. `o` is the policy-gradient objective's options."""

  def __init__(self, model, tokenizer, task, score_fn, o, *, rows: int, seed: int, ptx=None):
    self.model, self.tokenizer, self.task, self.score_fn, self.o = model, tokenizer, task, score_fn, o
    self.rows, self.seed, self.ptx = rows, seed, ptx  # ptx: step -> pretraining rows, or None
    self.algorithm = algorithms.get(o.algorithm)
    self.updates = o.epochs * o.minibatches
    self.controller = kl_lib.Controller(o.kl_coef, o.kl_target, o.kl_horizon)
    self.kl_step = -1  # the last step whose KL moved the controller (a re-made rollout must not move it twice)
    self.reference = None
    self.last_end = None
    self.zero_spread = collections.deque(maxlen=o.zero_spread_window)  # recent rollouts' zero-spread fractions
    self.warned_at = -o.zero_spread_window
    # Prompts are left-padded to one width, the longest of a probe of the task's prompts, so the sampler and
    # the train step compile once (a longer prompt still works, at the cost of a recompile).
    probe = task.examples("train", 256, seed=seed)
    self.prompt_len = max(len(chat.prompt_ids(tokenizer, ex.prompt)) for ex in probe)

  def set_reference(self, params):
    """Keep a frozen copy of the starting params in buffers of its own (the train step donates the policy's)."""
    self.reference = sharding.frozen_copy(params)

  def state_dict(self) -> dict:
    return {"kl_coef": self.controller.coef, "kl_coef_step": self.kl_step}

  def load_state_dict(self, s: dict):
    self.controller.coef = float(s["kl_coef"])
    self.kl_step = int(s["kl_coef_step"])

  def _warn_if_no_signal(self, step: int, frac: float, reward_mean: float):
    """Once per window: most groups had every sample score the same, so group baselines leave no gradient."""
    self.zero_spread.append(frac)
    o, window = self.o, self.zero_spread.maxlen
    if len(self.zero_spread) < window or step - self.warned_at < window:
      return
    mean = sum(self.zero_spread) / window
    if mean > o.zero_spread_warn and o.zero_spread_warn < 1.0:
      self.warned_at = step
      msg = (f"warning: rollouts {step + 1 - window}-{step + 1}: {100 * mean:.0f}% of groups had zero reward spread "
             f"(mean reward {reward_mean:.3g}), so {o.algorithm} gets almost no signal. Likely causes: the task is "
             "too hard (or too easy) for the starting policy (check its pass@k with configs/eval.py), a reward that "
             "is always 0 (check objective.rewards on a few answers), or too few samples per prompt "
             "(objective.group_size, temperature); a partial-credit reward (e.g. 'task:1,digits:1') gives "
             "groups a spread.")
      tqdm.write(msg, file=sys.stderr)  # beside the progress bar, not through it

  def shapes(self, seq_len: int) -> common.RolloutBatch:
    """The global batch as ShapeDtypeStructs (for the dry run)."""
    b, n = self.rows * self.o.epochs, self.o.max_new_tokens
    row = lambda *shape, dtype=jnp.float32: jax.ShapeDtypeStruct((b, *shape), dtype)
    t = self.prompt_len + n
    ptx = lm_batches.shapes(self.o.ptx_rows * self.updates, seq_len) if self.ptx is not None else None
    return common.RolloutBatch(tokens=row(t, dtype=jnp.int32), positions=row(t, dtype=jnp.int32),
                               segment_ids=row(t, dtype=jnp.int32), mask=row(n), old_logprobs=row(n),
                               ref_logprobs=row(n), advantages=row(n), returns=row(n), old_values=row(n),
                               kl_coef=row(), fresh=row(), ptx=ptx)

  def __call__(self, step: int, params) -> objective_lib.Batch:
    o, g, rows, n_new = self.o, self.o.group_size, self.rows, self.o.max_new_tokens
    jax.block_until_ready(params)
    t0 = time.time()
    update_s = t0 - self.last_end if self.last_end is not None else 0.0
    examples = self.task.examples("train", rows // g, seed=self.seed * 1_000_003 + int(step))
    prompts = [chat.prompt_ids(self.tokenizer, ex.prompt) for ex in examples for _ in range(g)]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), 0x5EED), step)
    temperature = float(o.temperature)
    r = sample(self.model, params, prompts, key, n_new, self.tokenizer, temperature, o.top_k, o.top_p,
               prompt_len=self.prompt_len)
    ref_logp, values = jax.device_get(_score_rows(self.model, params, self.reference, r["tokens"], r["positions"],
                                                  r["segment_ids"], n=n_new, temperature=temperature,
                                                  value=o.value if self.algorithm.critic else ""))
    mask = r["mask"].astype(np.float32)

    prompt_text = [ex.prompt for ex in examples for _ in range(g)]
    scores, parts = self.score_fn(prompt_text, responses(self.tokenizer, r))
    if o.truncated == "penalty":
      scores = np.where(r["truncated"], scores + o.truncated_penalty, scores).astype(np.float32)
    kl_tok = {k: np.asarray(kl_lib.estimate(r["logprobs"], ref_logp, k)) * mask for k in kl_lib.ESTIMATORS}
    kl_seq = kl_tok[o.kl_estimator].sum(1)
    beta = self.controller.coef
    if self.algorithm.critic:
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
      adv = np.asarray(algorithms.sequence_advantages(jnp.asarray(seq.reshape(-1, g)), o)).reshape(-1)[:, None] * mask
      returns = np.zeros_like(mask)
    if o.truncated == "mask":
      mask = mask * ~r["truncated"][:, None]

    # Adaptive KL: measured on this rollout, used from the next one on. The controller advances by the number
    # of samples, as TRL and OpenRLHF count it, so kl_horizon is in samples.
    if self.kl_step < step:
      self.controller.update(float(kl_seq.mean()), rows)
      self.kl_step = int(step)

    grouped = scores.reshape(-1, g)
    stats = {"reward_mean": scores.mean(), "reward_std": scores.std(),
             "zero_spread_frac": (grouped.max(1) == grouped.min(1)).mean(),
             "answer_len": r["mask"].sum(1).mean(), "truncated_frac": r["truncated"].mean(),
             **{f"rollout_kl_{k}": v.sum() / max(mask.sum(), 1.0) for k, v in kl_tok.items()},
             "rollout_kl_seq": kl_seq.mean(), "kl_coef": beta, **{f"reward_{k}": v.mean() for k, v in parts.items()}}
    # epochs x minibatches: each epoch one permutation of the rollout; the first slice is exactly on-policy
    order = np.concatenate([np.random.default_rng([self.seed, int(step), e]).permutation(rows)
                            for e in range(o.epochs)])
    local = sharding.local_rows(len(order))
    pick = lambda x: np.asarray(x)[order][local]
    batch = common.RolloutBatch(
        tokens=pick(r["tokens"]), positions=pick(r["positions"]), segment_ids=pick(r["segment_ids"]),
        mask=pick(mask), old_logprobs=pick(r["logprobs"]), ref_logprobs=pick(ref_logp),
        advantages=pick(adv.astype(np.float32)), returns=pick(returns.astype(np.float32)),
        old_values=pick(values.astype(np.float32)), kl_coef=np.full((len(order),), beta, np.float32)[local],
        fresh=(np.arange(len(order)) < rows // o.minibatches).astype(np.float32)[local],
        ptx=self.ptx(step) if self.ptx is not None else None)
    self._warn_if_no_signal(step, float(stats["zero_spread_frac"]), float(stats["reward_mean"]))
    self.last_end = time.time()
    stats.update(time_rollout_s=self.last_end - t0, time_update_s=update_s)
    return objective_lib.Batch(batch, {k: float(v) for k, v in stats.items()})
