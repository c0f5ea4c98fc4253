"""One policy-gradient rollout per train-loop step: sample -> reference log-probs (and values) -> rewards ->
advantages -> the step's RolloutBatch, plus statistics for the log.

Rows stay where they are sampled: the prompts are a global array sharded over the mesh's batch axes, so each
device samples and scores only its own rows (`sample_rows`: the whole decode loop runs on the device, no host
round trip per token; `score_rows`: reference log-probs). Only the response tokens go to the host, where each
process computes the rewards of its own rows; advantages, statistics and the minibatch order are one more
compiled program (`finish`) over the global rows. Per-row randomness is the sampler's key with the row's global index
(threefry is partitionable), so 1 process and 2 processes sample the same rows.

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
from lm import lora
from lm import objective as objective_lib
from lm import sampling
from lm import sharding
from lm.data import lm_batches
from lm.rl import advantages as adv_lib
from lm.rl import algorithms
from lm.rl import common
from lm.rl import kl as kl_lib


def rows_of(prompt_tokens, prompt_positions, prompt_segment_ids, out, n: int) -> dict:
  """Prompts [B, P] + sampler output -> the rollout rows: `tokens`, `positions`, `segment_ids` [B, P + n] (response
  slots after EOS get segment 0), `mask` (True up to and including EOS), `logprobs` [B, n], `truncated` [B]."""
  toks, logps, valid, done = out
  xp = np if isinstance(toks, np.ndarray) else jnp
  last = prompt_positions[:, -1:]
  return {
      "tokens": xp.concatenate([prompt_tokens, toks], 1).astype(np.int32),
      "positions": xp.concatenate([prompt_positions, last + 1 + xp.arange(n)], 1).astype(np.int32),
      "segment_ids": xp.concatenate([prompt_segment_ids, valid], 1).astype(np.int32),
      "mask": valid.astype(bool), "logprobs": logps.astype(np.float32), "truncated": ~done,
  }


def sample(model, params, prompts: list, rng, max_new_tokens: int, tokenizer, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, prompt_len: int | None = None) -> dict:
  """prompts: list of 1-D prompt token arrays (already repeated G times) -> numpy rows (see `rows_of`)."""
  out = sampling.generate(model, params, prompts, rng, max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, prompt_len=prompt_len)
  out = jax.device_get(out)
  return rows_of(out["prompt_tokens"], out["prompt_positions"], out["prompt_segment_ids"],
                 tuple(np.asarray(out[k]) for k in ("tokens", "logprobs", "mask")) + (~np.asarray(out["truncated"]),),
                 max_new_tokens)


def responses(tokenizer, rows: dict) -> list:
  return [chat.response_text(tokenizer, t, m) for t, m in zip(rows["tokens"][:, -rows["mask"].shape[1]:],
                                                               rows["mask"])]


def sample_rows(model, params, tokens, positions, segment_ids, rng, *, o, eos_id: int, pad_id: int, group: int):
  """Sampled rows (see `rows_of`) for prompts [B, P]: the whole decode loop on the device (lm/sampling.decode).
  Rows are global arrays sharded over the batch axes, so each device samples only its own rows."""
  out = sampling.decode(model, params, tokens, positions, segment_ids, rng, max_new_tokens=o.max_new_tokens,
                        temperature=float(o.temperature), top_k=o.top_k, top_p=o.top_p, eos_id=eos_id,
                        pad_id=pad_id, group=group)
  return rows_of(tokens, positions, segment_ids, out, o.max_new_tokens)


def score_rows(model, params, ref, tokens, positions, segment_ids, *, n: int, temperature: float, value: str,
               group: int = 1):
  """Reference log-probs of the sampled rows, and for PPO (value != "") their values at rollout time.

  Its own program, not fused into the sampler's: inside that one XLA computes the same forward with other
  roundings (measured: rollout KL statistics off in the 6th digit), and results must not depend on it."""
  ref_logp = common.forward(model, ref, tokens, positions, segment_ids, n, temperature, group)[1]
  if not value:
    return ref_logp, jnp.zeros_like(ref_logp)
  hidden = None if value == "critic" else common.forward(model, params, tokens, positions, segment_ids, n,
                                                         group=group)[2]
  return ref_logp, common.values(model, params, tokens, positions, segment_ids, hidden, value=value, n=n,
                                 group=group)


def advantages(r: dict, scores, beta: float, *, o, rows: int):
  """(advantages, returns) [B, N] of the sampled rows from their scores [B] (global arrays).

  Run op by op, not jitted, as when the host computed them: inside one jit XLA turns the group std's division
  by G - 1 into a multiplication by its reciprocal, which moved GRPO's advantages by 1 ulp and the train
  losses in their 7th digit (and so, over a run, which answers get sampled)."""
  algorithm = algorithms.get(o.algorithm)
  mask = r["mask"].astype(jnp.float32)
  kl = (lambda: kl_lib.estimate(r["logprobs"], r["ref_logprobs"], o.kl_estimator) * mask) if o.kl_in == "reward" \
      else None
  if algorithm.critic:
    last = jnp.maximum(mask.sum(1).astype(jnp.int32) - 1, 0)
    token_rewards = jnp.zeros_like(mask).at[jnp.arange(rows), last].set(scores)
    if kl is not None:
      token_rewards -= beta * kl()
    adv, returns = adv_lib.gae(token_rewards, r["values"], mask, o.gamma, o.lam)
    return adv_lib.whiten(adv, mask) if o.whiten else adv, returns
  seq = scores - beta * kl().sum(1) if kl is not None else scores
  adv = algorithms.sequence_advantages(seq.reshape(-1, o.group_size), o).reshape(-1)[:, None] * mask
  return adv, jnp.zeros_like(mask)


def finish(r: dict, scores, parts: dict, adv, returns, beta, order, *, o, rows: int):
  """Sampled rows, scores and advantages -> (the RolloutBatch in `order` (epochs x permutations), statistics).
  Pure and jitted: rows stay on their devices; the statistics are global means."""
  mask = r["mask"].astype(jnp.float32)
  kl_tok = {k: kl_lib.estimate(r["logprobs"], r["ref_logprobs"], k) * mask for k in kl_lib.ESTIMATORS}
  if o.truncated == "mask":
    mask = mask * ~r["truncated"][:, None]
  grouped = scores.reshape(-1, o.group_size)
  stats = {"reward_mean": scores.mean(), "reward_std": scores.std(),
           "zero_spread_frac": (grouped.max(1) == grouped.min(1)).mean(),
           "answer_len": r["mask"].sum(1).mean(), "truncated_frac": r["truncated"].mean(),
           **{f"rollout_kl_{k}": v.sum() / jnp.maximum(mask.sum(), 1.0) for k, v in kl_tok.items()},
           "rollout_kl_seq": kl_tok[o.kl_estimator].sum(1).mean(),
           **{f"reward_{k}": v.mean() for k, v in parts.items()}}
  batch = common.RolloutBatch(
      tokens=r["tokens"][order], positions=r["positions"][order], segment_ids=r["segment_ids"][order],
      mask=mask[order], old_logprobs=r["logprobs"][order], ref_logprobs=r["ref_logprobs"][order],
      advantages=adv[order].astype(jnp.float32), returns=returns[order].astype(jnp.float32),
      old_values=r["values"][order].astype(jnp.float32), kl_coef=jnp.full(order.shape, beta, jnp.float32),
      fresh=(jnp.arange(order.shape[0]) < rows // o.minibatches).astype(jnp.float32))
  return batch, stats


class Rollout:
  """Makes step k's RolloutBatch from the current params. `o` is the policy-gradient objective's options."""

  def __init__(self, model, tokenizer, task, score_fn, o, *, rows: int, seed: int, mesh, ptx=None):
    self.model, self.tokenizer, self.task, self.score_fn, self.o = model, tokenizer, task, score_fn, o
    self.rows, self.seed, self.mesh, self.ptx = rows, seed, mesh, ptx  # ptx: step -> pretraining rows, or None
    self.algorithm = algorithms.get(o.algorithm)
    # Compiled once per run: sampling, scoring, and the rest (advantages, statistics, the minibatch order), each
    # over rows sharded on the mesh's batch axes.
    self._sample = jax.jit(functools.partial(sample_rows, model, o=o, eos_id=tokenizer.eos_id,
                                             pad_id=tokenizer.pad_id, group=o.group_size))
    self._score = jax.jit(functools.partial(score_rows, model, n=o.max_new_tokens, temperature=float(o.temperature),
                                            value=o.value if self.algorithm.critic else "",
                                            group=o.group_size if o.share_prompts else 1))
    self._finish = jax.jit(functools.partial(finish, o=o, rows=rows),
                           out_shardings=(sharding.batch_sharding(mesh), sharding.replicated(mesh)))
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
    """Keep a frozen copy of the starting params in buffers of its own (the train step donates the policy's).
    With LoRA adapters the reference is the base they sit on (`reference_params`), never a second copy."""
    if lora.has_adapters(params):
      return
    self.reference = sharding.frozen_copy(params)

  def reference_params(self, params):
    return lora.without_adapters(params) if self.reference is None else self.reference

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

  def _permutation(self, step: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of the rollout's rows; with share_prompts, of whole groups (they share a prompt)."""
    rng = np.random.default_rng([self.seed, int(step), epoch])
    if not self.o.share_prompts:
      return rng.permutation(self.rows)
    g = self.o.group_size
    return (rng.permutation(self.rows // g)[:, None] * g + np.arange(g)).reshape(-1)

  def __call__(self, step: int, params) -> objective_lib.Batch:
    o, g, rows = self.o, self.o.group_size, self.rows
    # Host work that does not need the params first: it overlaps the update still running on the devices.
    examples = self.task.examples("train", rows // g, seed=self.seed * 1_000_003 + int(step))
    ids = [chat.prompt_ids(self.tokenizer, ex.prompt) for ex in examples]
    local = range(*sharding.local_rows(rows).indices(rows))  # this process's rows: it samples and scores only these
    width = max(self.prompt_len, *map(len, ids))  # the same on every process
    prompts = sharding.global_batch(sampling.left_pad([ids[i // g] for i in local], self.tokenizer.pad_id, width),
                                    self.mesh)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), 0x5EED), step)
    order = np.concatenate([self._permutation(step, e) for e in range(o.epochs)])  # each epoch one permutation
    jax.block_until_ready(params)
    t0 = time.time()
    update_s = t0 - self.last_end if self.last_end is not None else 0.0
    r = self._sample(params, *prompts, key)
    r["ref_logprobs"], r["values"] = self._score(params, self.reference_params(params), r["tokens"],
                                                 r["positions"], r["segment_ids"])
    # Rewards are host code: each process scores its own rows (their tokens are all that leaves the devices).
    texts = responses(self.tokenizer, {k: sharding.local_part(r[k]) for k in ("tokens", "mask")})
    scores, parts = self.score_fn([examples[i // g].prompt for i in local], texts)
    if o.truncated == "penalty":
      truncated = sharding.local_part(r["truncated"])
      scores = np.where(truncated, scores + o.truncated_penalty, scores).astype(np.float32)
    scores, parts = sharding.global_batch((scores, parts), self.mesh)
    beta = self.controller.coef
    adv, returns = advantages(r, scores, beta, o=o, rows=rows)
    batch, stats = self._finish(r, scores, parts, adv, returns, *sharding.replicate((np.float32(beta), order),
                                                                                     self.mesh))
    stats = {k: float(v) for k, v in jax.device_get(stats).items()}
    # Adaptive KL: measured on this rollout, used from the next one on. The controller advances by the number
    # of samples, as TRL and OpenRLHF count it, so kl_horizon is in samples.
    if self.kl_step < step:
      self.controller.update(stats["rollout_kl_seq"], rows)
      self.kl_step = int(step)
    if self.ptx is not None:
      batch = batch.replace(ptx=self.ptx(step))
    self._warn_if_no_signal(step, stats["zero_spread_frac"], stats["reward_mean"])
    self.last_end = time.time()
    stats.update(kl_coef=beta, time_rollout_s=self.last_end - t0, time_update_s=update_s)
    return objective_lib.Batch(batch, stats)
