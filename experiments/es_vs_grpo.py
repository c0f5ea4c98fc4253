"""Evolution strategies against GRPO at equal cost, from the same SFT checkpoint: both answer 4-digit addition
prompts with the same reward and are evaluated the same way; each sees the same number of sampled answers
(GRPO: 8 prompts x 8 samples per rollout; ES: 16 members x 4 prompts, greedy, per step), 3 seeds each.
Measured per run: greedy exact match, pass@1 and pass@16 on held-out problems, KL(policy || SFT start) on
sampled answers (k3), held-out Shakespeare bits per byte, wall time; and the memory each update needs per
device (XLA's memory analysis of the compiled train steps: ES keeps no optimizer moments and no activations).

  python -m lm.sweep experiments/es_vs_grpo.py --scale=full
"""
import os

from lm import sweep_report
from lm.sweep import Stage, Sweep

TINY = {"model.d_model": 16, "model.n_layers": 1, "model.max_len": 32, "data.seq_len": 32, "eval.max_batches": 1,
        "eval.batch_size": 8}
SCALES = {
    "full": dict(pretrain=None, sft=None, steps=300, eval_every=50, seeds=(0, 1, 2), model={}, small={},
                 es_small={}, kl_prompts=100),
    "smoke": dict(pretrain=4, sft=4, steps=2, eval_every=2, seeds=(0,), model=TINY, kl_prompts=4,
                  small={"train.batch_size": 8, "objective.group_size": 4, "objective.eval_examples": 8,
                         "objective.pass_n": 0},
                  es_small={"objective.eval_examples": 8, "objective.pass_n": 0, "objective.kl_prompts": 0}),
}


def sweep(scale: str) -> Sweep:
  s = SCALES[scale]
  quiet = {"train.progress": False, "eval.sample_tokens": 0, **s["model"]}
  steps = lambda n: {"train.steps": n, "eval.every": n, "checkpoint.every": n} if n else {}
  rl = {**quiet, "train.steps": s["steps"], "eval.every": s["eval_every"], "checkpoint.every": s["steps"]}
  stages = (
      Stage("pretrain", "configs/pretrain_shakespeare.py", {**quiet, **steps(s["pretrain"]), "seed": 0}),
      Stage("sft", "configs/sft_addition.py", {**quiet, **steps(s["sft"]), "seed": 0, **(
          {"objective.train_examples": 64, "train.batch_size": 8, "objective.eval_examples": 8,
           "objective.pass_n": 0} if s["sft"] else {})}, init_from="pretrain"),
      Stage("grpo", "configs/pg_addition.py", {**rl, **s["small"]}, init_from="sft"),
      Stage("es", "configs/es_addition.py", {**rl, "objective.population": 16, "train.batch_size": 16,
                                             "objective.prompts": 4, **s["es_small"]}, init_from="sft"))

  def measure(trial) -> dict:
    import jax
    from lm import dry_run
    from lm import runs
    from lm.objectives import es as es_objective
    from lm import tasks
    out = {}
    start_setup, start = runs.load(trial["dirs"]["sft"])
    test = tasks.get("addition", digits=4, pad=True, width=4).examples("test", s["kl_prompts"], seed=0)
    for stage in ("grpo", "es"):
      setup, params = runs.load(trial["dirs"][stage])
      with setup.use():
        out[f"{stage}.kl_to_sft"] = es_objective.kl_to_start(setup.model, setup.tokenizer, params, start, test,
                                                             jax.random.PRNGKey(7), 8)
      plan = dry_run.plan(runs.load_config(trial["dirs"][stage]))
      out[f"{stage}.step_memory_mib"] = (plan["argument_bytes_per_device"] + plan["temp_bytes_per_device"] +
                                         plan["output_bytes_per_device"] - plan["alias_bytes_per_device"]) / 2**20
      out[f"{stage}.opt_state_mib"] = plan["opt_state_bytes_per_device"] / 2**20
      out[f"{stage}.answers"] = _answers(trial["dirs"][stage])
    return out

  return Sweep(name="es_vs_grpo", stages=stages, space={}, seeds=s["seeds"], metric="es.exact_match",
               direction="maximize", measure=measure, plot=plot,
               report=("grpo.exact_match", "es.pass@1", "grpo.pass@1", "es.pass@16", "grpo.pass@16", "es.kl_to_sft",
                       "grpo.kl_to_sft", "es.bits_per_byte", "grpo.bits_per_byte", "es.step_memory_mib",
                       "grpo.step_memory_mib", "es.opt_state_mib", "grpo.opt_state_mib"))


def _answers(run_dir) -> int:
  """Sampled answers a run consumed: rollout rows (GRPO) or members x prompts (ES), per step, times steps."""
  from lm import runs
  c = runs.load_config(run_dir)
  per_step = c.train.batch_size * (c.objective.prompts if c.objective.name == "es" else 1)
  return int(per_step * c.train.steps)


def plot(rows, out_dir) -> list:
  """Held-out exact match against sampled answers (left) and against the run's wall time (right; steps take
  about equal time, so step k is at k / steps of the stage's wall time), mean ± std over seeds."""
  import json

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  done = [r for r in rows if r["status"] == "done"]
  if not done:
    return []
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for stage in ("grpo", "es"):
    curves = []
    for r in done:
      events = [json.loads(line) for line in open(os.path.join(r["dirs"][stage], "metrics.jsonl"))]
      evals = [e for e in events if e["split"] == "eval"]
      steps = max(e["step"] for e in events)
      answers = r["metrics"][f"{stage}.answers"] / steps
      secs = r["metrics"][f"{stage}.wall_s"] / steps
      curves.append(([e["step"] * answers for e in evals], [e["step"] * secs for e in evals],
                     [e["exact_match"] for e in evals]))
    ys = np.array([c[2] for c in curves])
    for ax, x in ((axes[0], curves[0][0]), (axes[1], np.mean([c[1] for c in curves], 0))):
      ax.errorbar(x, ys.mean(0), yerr=ys.std(0), marker="o", capsize=3, label=f"{stage} ({len(done)} seeds)")
  axes[0].set_xlabel("sampled answers")
  axes[1].set_xlabel("wall time of the run, s")
  for ax in axes:
    ax.set_ylabel("held-out 4-digit exact match (greedy)")
    ax.legend()
  fig.suptitle("ES vs GRPO from one SFT checkpoint")
  return [sweep_report.save_figure(fig, out_dir, "es_vs_grpo")]
