"""Direct preference optimisation (Rafailov et al. 2023): the policy learns from preference pairs directly, with
-log sigmoid(beta [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))]), each log-prob a
sum over the answer's tokens and its EOS given the prompt; objective.loss="ipo" for IPO's squared loss
(lm/pairwise.py). The reference is the starting params: their log-probs of every pair are computed once, at the
start, and travel with the pairs.

Pairs: JSONL (objective.train_files / eval_files) or simulated (objective.task), as for the reward model.
Metrics: the implicit rewards beta log(pi / ref) of both answers, their accuracy (chosen above rejected) and
margin, on train batches and on the held-out pairs; for simulated pairs, the win rate against the starting model
judged by the simulated annotator on held-out prompts (one answer each, common random numbers), the hidden
utility of both, and the task checker's exact match.
"""
import dataclasses
import functools

import jax

from lm import objective as objective_lib
from lm import pairwise
from lm import simulated_annotator
from lm import tasks
from lm.data import preferences
from lm.options import option


@dataclasses.dataclass(frozen=True)
class Options(preferences.PairOptions):
  beta: float = option(0.1, above=0.0, doc="strength of the implicit KL leash to the reference")
  loss: str = option("sigmoid", choices=pairwise.DPO_LOSSES)
  win_prompts: int = option(200, min=0, doc="simulated pairs: held-out prompts for the win rate (0: none)")
  win_temperature: float = option(1.0, min=0.0, doc="sampling temperature of both answers for the win rate "
                                                    "(0: greedy)")


def loss_fn(params, batch, rng, *, model, beta: float, loss: str):
  """Mean DPO (or IPO) loss over the batch's pairs, with the implicit rewards' accuracy and margin."""
  del rng  # no dropout in DPO updates
  logp, ref, w = pairwise.answer_logprobs(model, params, batch), batch["ref_logp"], batch["weight"]
  per_pair, chosen, rejected = pairwise.dpo(logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1], beta, loss)
  value = pairwise.mean(per_pair, w)
  return value, {"dpo_loss": value, **pairwise.pair_metrics(chosen, rejected, w, "implicit_reward_"),
                 "logp_chosen": pairwise.mean(logp[:, 0], w), "logp_rejected": pairwise.mean(logp[:, 1], w)}


def build(setup) -> objective_lib.Objective:
  config, model, tokenizer = setup.config, setup.model, setup.tokenizer
  o = objective_lib.parse_options(Options, config)
  with_reference = lambda rows, params: {
      **rows, "ref_logp": pairwise.eval_scores(setup, pairwise.jit_answer_logprobs, params, rows)}
  data = preferences.Pairs(o, setup, extra=with_reference)
  win = {}  # the win rate's prompts, annotator and the starting model's answers, fixed at the start
  key = jax.random.PRNGKey(config.seed + 99)

  def on_start(params):
    data.prepare(params)
    if o.task and o.win_prompts:
      win["prompts"] = [ex.prompt for ex in tasks.get(o.task, **o.task_options).examples(
          "test", o.win_prompts, seed=config.seed)]
      win["annotator"] = simulated_annotator.Annotator(tasks.get(o.task, **o.task_options),
                                                       style_weight=o.style_weight)
      win["start"] = _answers(params)

  def _answers(params):
    return simulated_annotator.answers(model, params, tokenizer, win["prompts"], key,
                                       temperature=o.win_temperature, max_new_tokens=o.max_new_tokens)

  def evaluate_fn(params, step):
    del step
    out = dict(data.counts)
    if data.eval_rows is not None:
      logp = pairwise.eval_scores(setup, pairwise.jit_answer_logprobs, params, data.eval_rows)
      ref = data.eval_rows["ref_logp"]
      _, chosen, rejected = pairwise.dpo(logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1], o.beta, o.loss)
      out.update({k: float(v) for k, v in pairwise.pair_metrics(chosen, rejected, prefix="eval_implicit_").items()})
    if win:
      out.update(simulated_annotator.compare(win["annotator"], win["prompts"], _answers(params), win["start"]))
    return out

  return objective_lib.Objective(
      loss_fn=functools.partial(loss_fn, model=model, beta=o.beta, loss=o.loss),
      batches=lambda step, params: objective_lib.Batch(data.batches(step)),
      batch_shapes=lambda: preferences.shapes(config.train.batch_size, o.length(config), ref_logp=(2,)),
      evaluate=evaluate_fn,
      on_start=on_start)
