"""Pairwise preference losses (Bradley-Terry for reward models, DPO and IPO for policies) and the teacher-forced
passes that score rows of lm/data/preferences.py: an answer's summed log-probability, and a reward head's scalar
at the row's last token. Pure and jit-able; the reward_model and dpo objectives and the learned reward share them.
"""
import jax
import jax.numpy as jnp
import numpy as np

from lm import heads
from lm import sharding
from lm.data import sft as sft_data
from lm.losses import token_nll

DPO_LOSSES = ("sigmoid", "ipo")


def _apply(model, params, rows):
  """(logits, hidden) of rows with any leading shape [..., T], flattened to [N, T] for the model."""
  t = rows["tokens"].shape[-1]
  flat = lambda k: rows[k].reshape(-1, t)
  logits, _, hidden = model.apply({"params": params}, flat("tokens"), flat("positions"), flat("segment_ids"),
                                  return_hidden=True)
  return logits, hidden


def answer_logprobs(model, params, rows):
  """Sum of log p(token | before) over each row's answer tokens (rows["mask"]): [...] for rows [..., T]."""
  logits, _ = _apply(model, params, rows)
  t = rows["tokens"].shape[-1]
  tokens, mask = rows["tokens"].reshape(-1, t), rows["mask"].reshape(-1, t)
  nll, _ = token_nll(logits[:, :-1], tokens[:, 1:])  # slot t is predicted at t - 1 (an answer never starts a row)
  return -(nll * mask[:, 1:]).sum(-1).reshape(rows["tokens"].shape[:-1])


def rewards(model, params, rows, head: str = "reward_head"):
  """The reward head's scalar at each row's last real token (rows are right-padded): [...] for rows [..., T]."""
  _, hidden = _apply(model, params, rows)
  t = rows["tokens"].shape[-1]
  last = jnp.maximum((rows["segment_ids"].reshape(-1, t) > 0).sum(-1) - 1, 0)
  h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  return heads.apply(params[head], h).reshape(rows["tokens"].shape[:-1])


def bradley_terry(r_chosen, r_rejected, margin=0.0):
  """Per-pair -log sigmoid(r_chosen - r_rejected - margin): the negative log-likelihood of the choice under a
  Bradley-Terry model whose scores are the rewards (with a margin, the preferred answer must win by it)."""
  return -jax.nn.log_sigmoid(r_chosen - r_rejected - margin)


def dpo(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float, loss: str = "sigmoid"):
  """Per-pair DPO loss and the implicit rewards beta * log(pi / ref) of both answers.

  h = log-ratio(chosen) - log-ratio(rejected), each a sum over answer tokens. sigmoid (Rafailov et al. 2023):
  -log sigmoid(beta h), log 2 at h = 0 (the policy equals the reference). ipo (Azar et al. 2023): (h - 1/(2 beta))^2,
  a squared loss that stops pushing once the log-ratio gap reaches 1/(2 beta) (on sums, as the paper writes it;
  TRL divides each log-prob by the answer's length).
  """
  chosen, rejected = logp_chosen - ref_chosen, logp_rejected - ref_rejected
  h = chosen - rejected
  if loss == "sigmoid":
    per_pair = -jax.nn.log_sigmoid(beta * h)
  elif loss == "ipo":
    per_pair = jnp.square(h - 1.0 / (2.0 * beta))
  else:
    raise ValueError(f"unknown DPO loss {loss!r}; use one of {DPO_LOSSES}")
  return per_pair, beta * chosen, beta * rejected


def mean(x, weight):
  """Mean of per-pair values over real pairs (weight 1; padding pairs of an eval batch weigh 0)."""
  return (x * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def pair_metrics(chosen, rejected, weight=None, prefix: str = "") -> dict:
  """Accuracy (the chosen answer scores higher; a tie counts half), mean margin and mean scores of both sides,
  over the pairs of weight 1 (all when None)."""
  weight = jnp.ones_like(chosen) if weight is None else weight
  acc = jnp.where(chosen > rejected, 1.0, jnp.where(chosen == rejected, 0.5, 0.0))
  return {f"{prefix}accuracy": mean(acc, weight), f"{prefix}margin": mean(chosen - rejected, weight),
          f"{prefix}chosen": mean(chosen, weight), f"{prefix}rejected": mean(rejected, weight)}


# Jitted forms for scoring outside the train step (evaluation, the learned reward, DPO's reference log-probs).
jit_rewards = jax.jit(rewards, static_argnames=("model", "head"))
jit_answer_logprobs = jax.jit(answer_logprobs, static_argnames=("model",))


# ---- held-out evaluation (host side) ----------------------------------------------------------------------------

def eval_scores(setup, fn, params, rows) -> np.ndarray:
  """fn(model, params, batch) -> [pairs, 2] (jitted) over every pair of `rows`, in eval batches: [N, 2] numpy."""
  n, out = len(rows["weight"]), []
  for local in sft_data.eval_batches(rows, setup.config.eval.batch_size):
    out.append(fn(setup.model, params, sharding.global_batch(local, setup.mesh)))
  return np.concatenate([np.asarray(jax.device_get(x)) for x in out])[:n]


def utility_accuracy(scores: np.ndarray, utility: np.ndarray) -> float:
  """How often scores [N, 2] order a pair as the hidden utility [N, 2] does, over pairs whose utilities differ."""
  differ = utility[:, 0] != utility[:, 1]
  agree = np.sign(scores[:, 0] - scores[:, 1]) == np.sign(utility[:, 0] - utility[:, 1])
  return float(agree[differ].mean()) if differ.any() else float("nan")
