"""Learning from preferences, end to end, with a simulated annotator whose noise is the swept dial
(results: experiments/PREFERENCES_NOTES.md):
pretraining (configs/pretrain_shakespeare.py) -> SFT on addition (configs/sft_addition.py) -> pairs of answers the
SFT model samples to 4-digit addition problems, judged by lm/simulated_annotator.py at noise 0 and 0.2 ->
  a reward model on them (configs/reward_model.py)  -> GRPO against it (configs/pg_reward_model.py)
  DPO on the same pairs (configs/dpo.py)
Measured per noise level: the reward model's held-out pairwise accuracy (against the noisy labels, and against the
hidden utility's order); along the RLHF run, the learned reward and the true (hidden) utility of its rollouts at
every logged step; for the SFT, RLHF and DPO models, the win rate against the SFT model judged by the simulated
annotator on held-out prompts (one sampled answer each at T=1, and greedy), their mean hidden utility, the
checker's exact match, and held-out Shakespeare bits per byte (what each method costs the language model).

  python -m lm.sweep experiments/preferences.py --scale=full     # ~20 min on 2 CPU cores (12.5 of them pretrain + SFT)
  python -m lm.sweep experiments/preferences.py --scale=smoke    # tiny models, a minute: the pipeline only
"""
import json
import os

from lm.sweep import Stage, Sweep, grid

TINY = {"model.d_model": 16, "model.n_layers": 1, "model.max_len": 32, "data.seq_len": 32, "eval.max_batches": 1,
        "eval.batch_size": 8}
SCALES = {
    "full": dict(pretrain=None, sft={"eval.every": 1000}, model={}, prompts=500,
                 rm={}, pg={}, dpo={}),
    "smoke": dict(pretrain={"train.steps": 4, "eval.every": 4, "checkpoint.every": 4}, model=TINY, prompts=8,
                  sft={"train.steps": 4, "eval.every": 4, "checkpoint.every": 4, "objective.train_examples": 64,
                       "train.batch_size": 8, "objective.eval_examples": 8, "objective.pass_n": 0},
                  rm={"train.steps": 4, "eval.every": 2, "checkpoint.every": 4, "objective.pairs": 32,
                      "objective.eval_pairs": 16, "train.batch_size": 8},
                  pg={"train.steps": 4, "eval.every": 2, "checkpoint.every": 4, "train.batch_size": 8,
                      "objective.group_size": 4, "objective.eval_examples": 8},
                  dpo={"train.steps": 4, "eval.every": 2, "checkpoint.every": 4, "objective.pairs": 32,
                       "objective.eval_pairs": 16, "train.batch_size": 8, "objective.win_prompts": 8}),
}
NOISE = (0.0, 0.2)


def sweep(scale: str) -> Sweep:
  s = SCALES[scale]
  quiet = {"train.progress": False, "eval.sample_tokens": 0, **s["model"]}
  stages = (
      Stage("pretrain", "configs/pretrain_shakespeare.py", {**quiet, **(s["pretrain"] or {}), "seed": 0}),
      Stage("sft", "configs/sft_addition.py", {**quiet, **s["sft"], "seed": 0}, init_from="pretrain"),
      Stage("rm", "configs/reward_model.py", {**quiet, **s["rm"]}, init_from="sft"),
      Stage("pg", "configs/pg_reward_model.py", {**quiet, **s["pg"]}, init_from="sft",
            links={"objective.reward_args.reward_model": "rm"}),
      Stage("dpo", "configs/dpo.py", {**quiet, **s["dpo"]}, init_from="sft"))

  def measure(trial) -> dict:
    return measure_trial(trial["dirs"], s["prompts"])

  # "objective.noise" is a key of the rm and dpo configs only: both read pairs judged at that noise
  return Sweep(name="preferences", stages=stages, space={"objective.noise": grid(*NOISE)}, seeds=(0,),
               metric="rm.utility_accuracy", direction="maximize", measure=measure, plot=plot,
               report=("rm.pair_accuracy", "rm.eval_label_agreement", "pg.peak_step", "pg.utility_at_peak",
                       "pg.utility_final", "pg.learned_at_peak", "pg.learned_final", "pg.win_rate",
                       "dpo.win_rate", "pg.greedy_win_rate", "dpo.greedy_win_rate", "sft.utility", "pg.utility",
                       "dpo.utility", "sft.bits_per_byte", "pg.bits_per_byte", "dpo.bits_per_byte"))


def measure_trial(dirs: dict, n_prompts: int) -> dict:
  """Win rates against the SFT model (sampled at T=1 with one key for every model, and greedy), hidden utility,
  exact match and bits per byte of the SFT, RLHF and DPO models; the RLHF run's proxy and true utility curves."""
  import jax
  from lm import runs
  from lm import simulated_annotator
  from lm import sweep as sweep_lib
  from lm import tasks
  config = runs.load_config(dirs["rm"])
  task = tasks.get(config.objective.task, **config.objective.task_options)
  annotator = simulated_annotator.Annotator(task, style_weight=config.objective.style_weight)
  prompts = [ex.prompt for ex in task.examples("test", n_prompts, seed=0)]
  key, n_new = jax.random.PRNGKey(1234), config.objective.max_new_tokens
  out, answers = {}, {}
  for stage in ("sft", "pg", "dpo"):
    setup, params = runs.load(dirs[stage])
    with setup.use():
      for t, name in ((1.0, "sampled"), (0.0, "greedy")):
        answers[stage, name] = simulated_annotator.answers(setup.model, params, setup.tokenizer, prompts, key,
                                                           temperature=t, max_new_tokens=n_new)
    for name, prefix in (("sampled", ""), ("greedy", "greedy_")):
      r = simulated_annotator.compare(annotator, prompts, answers[stage, name], answers["sft", name])
      out.update({f"{stage}.{prefix}{k}": v for k, v in r.items() if k != "start_utility"})
    out[f"{stage}.bits_per_byte"] = sweep_lib.last_eval(dirs[stage])["bits_per_byte"]
  out.update({f"pg.{k}": v for k, v in proxy_curve(dirs["pg"]).items() if k != "curve"})
  rm = sweep_lib.last_eval(dirs["rm"])
  out.update({f"rm.{k}": rm[k] for k in ("pair_accuracy", "utility_accuracy", "eval_label_agreement")})
  return out


def proxy_curve(run_dir: str, window: int = 5) -> dict:
  """The RLHF run's learned reward and true utility per logged step (means of each rollout), smoothed over
  `window` logged steps; where the true utility peaks, and both there and at the end."""
  import numpy as np
  events = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  train = [e for e in events if e["split"] == "train" and "reward_simulated" in e]
  steps = np.array([e["step"] for e in train])
  smooth = lambda x: np.convolve(x, np.ones(window) / window, mode="valid") if len(x) >= window else np.asarray(x)
  true, learned = smooth([e["reward_simulated"] for e in train]), smooth([e["reward_reward_model"] for e in train])
  steps = steps[len(steps) - len(true):]
  peak = int(np.argmax(true))
  return {"peak_step": int(steps[peak]), "utility_at_peak": float(true[peak]), "utility_final": float(true[-1]),
          "learned_at_peak": float(learned[peak]), "learned_final": float(learned[-1]),
          "utility_start": float(true[0]), "learned_start": float(learned[0]),
          "curve": {"step": steps.tolist(), "true": true.tolist(), "learned": learned.tolist()}}


def plot(rows, out_dir) -> list:
  """Per noise level: the RLHF run's learned reward and true utility against steps (smoothed rollout means), and
  held-out greedy exact match at its evals."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  done = [r for r in rows if r["status"] == "done"]
  if not done:
    return []
  fig, axes = plt.subplots(1, len(done), figsize=(5.5 * len(done), 4), squeeze=False)
  for ax, r in zip(axes[0], done):
    c = proxy_curve(r["dirs"]["pg"])["curve"]
    ax.plot(c["step"], c["learned"], color="tab:blue", label="learned reward (what GRPO maximises)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("learned reward", color="tab:blue")
    twin = ax.twinx()
    twin.plot(c["step"], c["true"], color="tab:red", label="true (hidden) utility")
    twin.set_ylabel("true utility of the rollouts", color="tab:red")
    events = [json.loads(line) for line in open(os.path.join(r["dirs"]["pg"], "metrics.jsonl"))]
    evals = [e for e in events if e["split"] == "eval" and "exact_match" in e]
    twin.plot([e["step"] for e in evals], [e["exact_match"] for e in evals], "o--", color="tab:gray",
              label="greedy exact match (checker)")
    ax.set_title(f"annotator noise {r['params'].get('objective.noise')}: reward model "
                 f"{r['metrics'].get('rm.utility_accuracy', float('nan')):.2f} utility accuracy", fontsize=9)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")
  fig.suptitle("RLHF against a learned reward: proxy vs true utility")
  fig.tight_layout()
  path = os.path.join(out_dir, "rlhf_proxy_vs_true.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path]
