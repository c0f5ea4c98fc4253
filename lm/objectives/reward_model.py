"""Reward model: the transformer trunk with a scalar head (params["reward_head"], lm/heads.py) read at the last
token of `prompt + answer EOS`, trained on preference pairs with the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected - margin) (lm/pairwise.py), optionally with reward centring.

Pairs: JSONL (objective.train_files / eval_files, e.g. `python -m lm.annotate export`) or simulated
(objective.task: two answers sampled from the starting model per prompt, judged by lm/simulated_annotator.py).
Evaluation: pairwise accuracy on the held-out pairs (`pair_accuracy`: the chosen answer scores higher) and, for
simulated pairs, `utility_accuracy`: agreement with the hidden utility's order on pairs whose utilities differ
(what the model recovered, whatever the annotator's noise).
A finished run is a reward for policy gradient: objective.rewards="reward_model:1.0" with
objective.reward_args.reward_model=<this run's directory> (lm/rewards/reward_model.py).
"""
import dataclasses
import functools

import jax.numpy as jnp

from lm import heads
from lm import objective as objective_lib
from lm import pairwise
from lm.data import preferences
from lm.options import option


@dataclasses.dataclass(frozen=True)
class Options(preferences.PairOptions):
  center_coef: float = option(0.0, min=0.0, doc="reward centring: + coef x mean (r_chosen + r_rejected)^2, which "
                                                "pins the rewards' mean near 0 (Eisenstein et al. 2023)")
  use_margin: bool = option(True, doc="subtract each pair's margin inside the sigmoid (JSONL `margin`, default 0)")


def loss_fn(params, batch, rng, *, model, center_coef: float = 0.0, use_margin: bool = True):
  """Mean Bradley-Terry loss over the batch's pairs (+ centring), with reward accuracy and margins."""
  del rng  # no dropout in reward-model updates
  r = pairwise.rewards(model, params, batch)
  chosen, rejected, w = r[:, 0], r[:, 1], batch["weight"]
  bt = pairwise.mean(pairwise.bradley_terry(chosen, rejected, batch["margin"] if use_margin else 0.0), w)
  metrics = {"bt_loss": bt, **pairwise.pair_metrics(chosen, rejected, w, "reward_")}
  loss = bt
  if center_coef:
    center = pairwise.mean(jnp.square(chosen + rejected), w)
    loss = loss + center_coef * center
    metrics["center_loss"] = center
  return loss, metrics


def build(setup) -> objective_lib.Objective:
  config, model = setup.config, setup.model
  o = objective_lib.parse_options(Options, config)
  data = preferences.Pairs(o, setup)

  def evaluate_fn(params, step):
    del step
    if data.eval_rows is None:
      return dict(data.counts)
    r = pairwise.eval_scores(setup, pairwise.jit_rewards, params, data.eval_rows)
    out = {**data.counts, **{k: float(v) for k, v in pairwise.pair_metrics(r[:, 0], r[:, 1], prefix="pair_").items()}}
    if data.eval_utility is not None:
      out["utility_accuracy"] = pairwise.utility_accuracy(r, data.eval_utility)
    return out

  return objective_lib.Objective(
      loss_fn=functools.partial(loss_fn, model=model, center_coef=o.center_coef, use_margin=o.use_margin),
      batches=lambda step, params: objective_lib.Batch(data.batches(step)),
      batch_shapes=lambda: preferences.shapes(config.train.batch_size, o.length(config)),
      evaluate=evaluate_fn,
      init_params=lambda rng, params: {**params, "reward_head": heads.init(rng, params, model.cfg.d_model)},
      on_start=data.prepare)
