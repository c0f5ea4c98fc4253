"""Ablation 2, prediction = compression: held-out bits per byte and the real coded size of Tiny Shakespeare's test
split (the model-driven range coder, lm/compression.py) at every checkpoint of pretraining, against gzip, bzip2,
xz and zstd, over 3 seeds. Two coded sizes per checkpoint, both with the codec fallback off so that they are the
model's own files: the network alone (static), and `lm.compress encode`'s default (learning while coding, mixed
with context models).

  python -m lm.sweep experiments/compression_steps.py --scale=full
"""
import bz2
import gzip
import lzma

import zstandard

from lm import sweep_report
from lm.sweep import Stage, Sweep

SCALES = {
    # A checkpoint every 500 steps: coding the 55,770-byte test split takes ~30 s a checkpoint on 2 cores.
    "full": dict(steps=2000, every=500, seeds=(0, 1, 2), test_bytes=0, model={}),
    "smoke": dict(steps=6, every=3, seeds=(0,), test_bytes=300,
                  model={"model.d_model": 16, "model.n_layers": 1, "model.max_len": 32, "data.seq_len": 32,
                         "train.batch_size": 8, "eval.max_batches": 1, "eval.batch_size": 8}),
}
BASELINES = {"gzip -9": lambda b: gzip.compress(b, 9), "bzip2 -9": lambda b: bz2.compress(b, 9),
             "xz -9": lambda b: lzma.compress(b, preset=9),
             "zstd -19": lambda b: zstandard.ZstdCompressor(level=19).compress(b)}


def sweep(scale: str) -> Sweep:
  s = SCALES[scale]
  stage = Stage("pretrain", "configs/pretrain_shakespeare.py", {
      "train.steps": s["steps"], "train.progress": False, "eval.every": s["every"], "eval.sample_tokens": 0,
      "checkpoint.every": s["every"], "checkpoint.keep": s["steps"] // s["every"] + 1, **s["model"]})

  def measure(trial) -> dict:
    """Coded size and cross-entropy of the test split at every checkpoint; the baselines' sizes."""
    from lm import checkpoint as ckpt_lib
    from lm import compression
    from lm import runs
    from lm.data import sources
    run = trial["dirs"]["pretrain"]
    data = sources.source(runs.load_config(run).data, "test")[0]["text"]
    data = data.encode() if isinstance(data, str) else bytes(data)
    data = data[:s["test_bytes"]] if s["test_bytes"] else data
    out = {f"{name}_bpb": 8 * len(fn(data)) / len(data) for name, fn in BASELINES.items()}
    ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(run), read_only=True)
    steps = ckpt.steps()
    ckpt.manager.close()
    for step in steps:
      setup, params = runs.load(run, step=step)
      # 128 lanes, not lm.compress's 32: 4x fewer sequential model calls for 24 files; each lane's first chunk
      # has no context and the model adapts in bigger blocks, so the files are ~1% larger than lm.compress's.
      static = compression.Coder(setup, params, batch_size=128)
      adaptive = compression.Coder(setup, params, batch_size=128, adapt=compression.DEFAULT_ADAPT,
                                   mix=compression.DEFAULT_MIX)
      for name, coder in (("coded", static), ("adaptive", adaptive)):
        blob = coder.encode(data, fallback=False)
        if step == steps[-1]:  # one decode per seed and mode proves the files are real; it costs an encode
          assert coder.decode(blob) == data
        out[f"{name}_bpb@{step}"] = 8 * len(blob) / len(data)
      out[f"model_bpb@{step}"] = static.cross_entropy_bits(data) / len(data)
    out["test_bytes"] = len(data)
    return out

  return Sweep(name="compression_steps", stages=(stage,), space={}, seeds=s["seeds"],
               metric="pretrain.bits_per_byte", measure=measure, plot=plot,
               report=tuple(f"{m}_bpb@{k}" for m in ("coded", "adaptive")
                            for k in range(s["every"], s["steps"] + 1, s["every"])) +
               tuple(f"{n}_bpb" for n in BASELINES))


def plot(rows, out_dir) -> list:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  done = [r for r in rows if r["status"] == "done"]
  if not done:
    return []
  steps = sorted({int(k.split("@")[1]) for k in done[0]["metrics"] if k.startswith("coded_bpb@")})
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for key, label in (("model_bpb", "model cross-entropy"), ("coded_bpb", "model + range coder (real file)"),
                     ("adaptive_bpb", "learning while coding + mixing (real file)")):
    vals = np.array([[r["metrics"][f"{key}@{s}"] for s in steps] for r in done])
    ax.errorbar(steps, vals.mean(0), yerr=vals.std(0, ddof=1) if len(done) > 1 else None, marker="o", capsize=3,
                label=f"{label} (mean ± std, {len(done)} seeds)")
  for name, style in zip(BASELINES, (":", "--", "-.", (0, (1, 3)))):
    ax.axhline(np.mean([r["metrics"][f"{name}_bpb"] for r in done]), color="gray", linestyle=style, label=name)
  ax.set_xlabel("pretraining step")
  ax.set_ylabel("bits per byte of the test split")
  ax.set_title("Prediction = compression: Tiny Shakespeare test split")
  ax.legend(fontsize=7)
  return [sweep_report.save_figure(fig, out_dir, "compression_vs_steps")]
