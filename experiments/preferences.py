"""Learning from preferences, end to end, with a simulated annotator whose noise is the swept dial
(results: experiments/PREFERENCES_NOTES.md):
pretraining (configs/pretrain_shakespeare.py) -> SFT on addition (configs/sft_addition.py) -> pairs of answers the
SFT model samples to 4-digit addition problems, judged by lm/simulated_annotator.py at noise 0 and 0.2 ->
  a reward model on them (configs/reward_model.py)  -> GRPO against it (configs/pg_reward_model.py), at its
                                                       KL coefficient (0.02) and on a 10x tighter leash (0.2)
  DPO on the same pairs (configs/dpo.py)
  and, as the ceiling, GRPO against the hidden utility itself (what a perfect reward model would give)
Measured per noise level: the reward model's held-out pairwise accuracy (against the noisy labels, and against the
hidden utility's order); along the RLHF run, the learned reward and the true (hidden) utility of its rollouts at
every logged step; for the SFT, RLHF and DPO models, the win rate against the SFT model judged by the simulated
annotator on held-out prompts (one sampled answer each at T=1, and greedy), their mean hidden utility, the
checker's exact match, and held-out Shakespeare bits per byte (what each method costs the language model).

  python -m lm.sweep experiments/preferences.py --scale=full     # ~90 min on 2 CPU cores (~30 of them pretrain + 3 SFT)
  python -m lm.sweep experiments/preferences.py --scale=smoke    # tiny models, a minute: the pipeline only
"""
import json
import os

from lm.sweep import Stage, Sweep, grid

TINY = {"model.d_model": 16, "model.n_layers": 1, "model.max_len": 32, "data.seq_len": 32, "eval.max_batches": 1,
        "eval.batch_size": 8}
SCALES = {
    "full": dict(pretrain=None, sft={}, model={}, prompts=500, seeds=(0, 1, 2), rm={}, pg={}, dpo={}),
    "smoke": dict(pretrain={"train.steps": 4, "eval.every": 4, "checkpoint.every": 4}, model=TINY, prompts=8,
                  seeds=(0,),
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
LEASH = 0.2  # the second RLHF run's KL coefficient (configs/pg_reward_model.py's is 0.02)
RL = ("pg", "pg_leash")  # against the learned reward
MODELS = ("sft",) + RL + ("pg_true", "dpo")
CURVE_KEYS = ("peak_step", "utility_start", "utility_at_peak", "utility_final", "kl_final")  # + learned_* for RL


def sweep(scale: str) -> Sweep:
  s = SCALES[scale]
  quiet = {"train.progress": False, "eval.sample_tokens": 0, **s["model"]}
  stages = (
      Stage("pretrain", "configs/pretrain_shakespeare.py", {**quiet, **(s["pretrain"] or {}), "seed": 0}),
      Stage("sft", "configs/sft_addition.py", {**quiet, **s["sft"]}, init_from="pretrain"),
      Stage("rm", "configs/reward_model.py", {**quiet, **s["rm"]}, init_from="sft"),
      Stage("pg", "configs/pg_reward_model.py", {**quiet, **s["pg"]}, init_from="sft",
            links={"objective.reward_args.reward_model": "rm"}),
      Stage("pg_leash", "configs/pg_reward_model.py", {**quiet, **s["pg"], "objective.kl_coef": LEASH},
            init_from="sft", links={"objective.reward_args.reward_model": "rm"}),
      # no link to the reward model, so the noise levels of a seed share this run
      Stage("pg_true", "configs/pg_reward_model.py", {**quiet, **s["pg"], "objective.rewards": "simulated:1.0"},
            init_from="sft"),
      Stage("dpo", "configs/dpo.py", {**quiet, **s["dpo"]}, init_from="sft"))

  def measure(trial) -> dict:
    return measure_trial(trial["dirs"], s["prompts"])

  # "objective.noise" is a key of the rm and dpo configs only: both read pairs judged at that noise
  return Sweep(name="preferences", stages=stages, space={"objective.noise": grid(*NOISE)}, seeds=s["seeds"],
               metric="rm.utility_accuracy", direction="maximize", measure=measure, plot=plot,
               report=("rm.pair_accuracy", "rm.eval_label_agreement",
                       *[f"{rl}.{k}" for rl in RL for k in CURVE_KEYS + ("learned_start", "learned_final")],
                       *[f"pg_true.{k}" for k in CURVE_KEYS],
                       *[f"{m}.{k}" for m in MODELS for k in (
                           "win_rate", "greedy_win_rate", "utility", "checker_exact", "bits_per_byte")]))


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
  for stage in MODELS:
    setup, params = runs.load(dirs[stage])
    with setup.use():
      for t, name in ((1.0, "sampled"), (0.0, "greedy")):
        answers[stage, name] = simulated_annotator.answers(setup.model, params, setup.tokenizer, prompts, key,
                                                           temperature=t, max_new_tokens=n_new)
    for name, prefix in (("sampled", ""), ("greedy", "greedy_")):
      r = simulated_annotator.compare(annotator, prompts, answers[stage, name], answers["sft", name])
      out.update({f"{stage}.{prefix}{k}": v for k, v in r.items() if k != "start_utility"})
    out[f"{stage}.bits_per_byte"] = sweep_lib.last_eval(dirs[stage])["bits_per_byte"]
  for rl in RL + ("pg_true",):
    out.update({f"{rl}.{k}": v for k, v in proxy_curve(dirs[rl]).items() if k != "curve"})
  rm = sweep_lib.last_eval(dirs["rm"])
  out.update({f"rm.{k}": rm[k] for k in ("pair_accuracy", "utility_accuracy", "eval_label_agreement")})
  return out


def proxy_curve(run_dir: str, window: int = 3) -> dict:
  """The RLHF run's learned reward, true utility and KL to the SFT model (per answer, summed over its tokens) per
  logged step (means of each rollout), smoothed over `window` logged steps; where the true utility peaks, and
  all three there and at the end."""
  import numpy as np
  events = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  train = [e for e in events if e["split"] == "train" and "reward_simulated" in e]
  steps = np.array([e["step"] for e in train])
  smooth = lambda x: np.convolve(x, np.ones(window) / window, mode="valid") if len(x) >= window else np.asarray(x)
  curve = {"true": smooth([e["reward_simulated"] for e in train]), "kl": smooth([e["rollout_kl_seq"] for e in train])}
  if "reward_reward_model" in train[0]:  # not in the run against the true utility
    curve["learned"] = smooth([e["reward_reward_model"] for e in train])
  true, steps = curve["true"], steps[len(steps) - len(curve["true"]):]
  peak = int(np.argmax(true))
  out = {"peak_step": int(steps[peak]), "utility_at_peak": float(true[peak]), "utility_final": float(true[-1]),
         "utility_start": float(true[0]), "kl_final": float(curve["kl"][-1]),
         "curve": {"step": steps.tolist(), **{k: v.tolist() for k, v in curve.items()}}}
  if "learned" in curve:
    out.update(learned_at_peak=float(curve["learned"][peak]), learned_final=float(curve["learned"][-1]),
               learned_start=float(curve["learned"][0]))
  return out


def mean_curve(trials: list, stage: str) -> dict:
  """proxy_curve's smoothed curves of one stage, averaged over trials (seeds), cut to the shortest run."""
  import numpy as np
  curves = [proxy_curve(r["dirs"][stage])["curve"] for r in trials]
  n = min(len(c["step"]) for c in curves)
  return {k: np.mean([c[k][:n] for c in curves], 0) for k in curves[0]}


def plot(rows, out_dir) -> list:
  """Per noise level (columns), for both RLHF runs (solid: KL coefficient 0.02, dashed: LEASH): top, the learned
  reward GRPO maximises and the true (hidden) utility of the same rollouts against steps; bottom, the true utility
  against the KL to the SFT model those steps cost. Means over seeds (smoothed rollout means)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from lm import runs
  done = [r for r in rows if r["status"] == "done"]
  if not done:
    return []
  noises = sorted({r["params"].get("objective.noise") for r in done})
  fig, axes = plt.subplots(2, len(noises), figsize=(6 * len(noises), 7.5), squeeze=False)
  for col, noise in enumerate(noises):
    trials = [r for r in done if r["params"].get("objective.noise") == noise]
    top, twin, bottom = axes[0][col], axes[0][col].twinx(), axes[1][col]
    for rl, style in zip(RL, ("-", "--")):
      mean, coef = mean_curve(trials, rl), runs.load_config(trials[0]["dirs"][rl]).objective.kl_coef
      top.plot(mean["step"], mean["learned"], style, color="tab:blue", label=f"learned reward, KL coef {coef:g}")
      twin.plot(mean["step"], mean["true"], style, color="tab:red", label=f"true utility, KL coef {coef:g}")
      bottom.plot(mean["kl"], mean["true"], style, color="tab:red",
                  label=f"against the learned reward, KL coef {coef:g}")
    gold = mean_curve(trials, "pg_true")
    twin.plot(gold["step"], gold["true"], color="tab:green", label="true utility, GRPO against it (ceiling)")
    bottom.plot(gold["kl"], gold["true"], color="tab:green", label="against the true utility (ceiling)")
    top.set_xlabel("GRPO step")
    top.set_ylabel("learned reward (proxy)", color="tab:blue")
    twin.set_ylabel("true utility of the rollouts", color="tab:red")
    acc = np.mean([r["metrics"].get("rm.utility_accuracy", float("nan")) for r in trials])
    top.set_title(f"annotator noise {noise}: reward model {acc:.2f} utility accuracy ({len(trials)} seeds)",
                  fontsize=9)
    lines, more = top.get_legend_handles_labels(), twin.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    bottom.set_xlabel("KL to the SFT model (nats per answer)")
    bottom.set_ylabel("true utility of the rollouts")
    bottom.legend(fontsize=7)
  fig.suptitle("RLHF against a learned reward: proxy vs true utility")
  fig.tight_layout()
  path = os.path.join(out_dir, "rlhf_proxy_vs_true.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path]
