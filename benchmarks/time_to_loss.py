"""Wall time to a validation loss: nanoGPT's CPU Shakespeare run (eager PyTorch) against one of our configs.

  python benchmarks/time_to_loss.py                                  # 3 alternating pairs, target 1.88
  python benchmarks/time_to_loss.py --repeats=5 --config=configs/speedrun_shakespeare.py
  python benchmarks/time_to_loss.py --only=ours --config.train.muon_lr=0.03    # one run of ours (exploring)

Both sides train on TFDS tiny_shakespeare's train split and are evaluated on the same data the same way:
every target of TFDS's validation split (55,769 characters) predicted once, in 64-character windows
(lm/data/lm_batches.eval_batches), mean nats per character, every --eval_tokens training tokens (default: every
100 steps of nanoGPT's batch). A side's time is the wall time from before it builds its model (ours: before
lm.train.run, so loading the data and compiling count) to the end of its first evaluation at or under
--target; "train" is that time without the evaluations. Each run is its own subprocess (no warm caches; ours
without JAX's persistent compilation cache), the two sides alternate, same seeds on both.

nanoGPT side: benchmarks/torch_reference.py's model (nanoGPT's model.py: 4 layers x 4 heads x 128, context 64,
no bias, no dropout, tied head, vocab 65 characters) and nanoGPT's train.py loop for
config/train_shakespeare_char.py on CPU: batch 12, AdamW (0.9, 0.99) with weight decay 0.1 on matrices only,
lr 1e-3 with 100 warm-up steps, cosine to 1e-4 at step 2000 (then 1e-4), grad clip 1.0, eager, torch's default
threads. nanoGPT reports val loss 1.88 at step 2000 on its own split; it runs here until --target or
--max_torch_steps. Needs torch (the `test` extra). Prints a table; asserts nothing.
"""
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cold compile is part of what a researcher waits for
_cpus = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--cpus=")]
if _cpus and _cpus[-1]:  # before torch or jax size their thread pools (both follow the affinity mask)
  os.sched_setaffinity(0, {int(c) for c in _cpus[-1].split(",")})
if "--only=ours" in sys.argv:  # each side runs as its own program does: launch.py sets this before anything
  from lm import cpu
  cpu.keep_freed_memory()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/speedrun_shakespeare.py"),
                                          "Our config to time.")
_TARGET = flags.DEFINE_float("target", 1.88, "Validation loss (nats/char) to reach.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternating (nanoGPT, ours) pairs; seeds 0..repeats-1.")
_EVAL_TOKENS = flags.DEFINE_integer("eval_tokens", 100 * 12 * 64, "Training tokens between evaluations.")
_MAX_TORCH_STEPS = flags.DEFINE_integer("max_torch_steps", 3000, "nanoGPT gives up after this many steps.")
_ONLY = flags.DEFINE_enum("only", None, ["nanogpt", "ours"], "Run one side once (seed --seed) and print its JSON.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of an --only run.")
_CPUS = flags.DEFINE_string("cpus", "", "Pin both sides to these cores (e.g. 0): one thread each. For a busy "
                            "machine, where torch's spinning OpenMP threads lose far more than their share.")
_TIMEOUT = flags.DEFINE_integer("timeout", 900, "Seconds one run may take.")
_DATA = flags.DEFINE_string("data", "", "Internal: the .npz of character ids the nanoGPT side reads.")


def char_data(config) -> dict:
  """nanoGPT's side of the data: TFDS's train split as character ids 0..64 (nanoGPT's vocabulary: the text's
  characters) and the validation split as the very windows lm/data/lm_batches.eval_batches gives our side."""
  import numpy as np
  from lm import tokenizer as tokenizer_lib
  from lm.data import lm_batches
  tok = tokenizer_lib.get(config.tokenizer)
  train, val = (lm_batches.split_tokens(config.data, s, tok) for s in ("train", "validation"))
  chars = np.unique(np.concatenate([train, val]))
  ids = np.zeros(int(chars.max()) + 1, np.int64)
  ids[chars] = np.arange(len(chars))
  windows = list(lm_batches.eval_batches(ids[val], config.data.seq_len, 64))
  return {"train": ids[train], "vocab": max(65, len(chars)),
          **{f"val_{k}": np.stack([w[k] for w in windows]) for k in ("inputs", "targets", "weights")}}


def run_nanogpt(data_path: str, seed: int, eval_every: int, target: float, max_steps: int) -> dict:
  import math

  import numpy as np
  import torch
  import torch.nn.functional as F

  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import torch_reference as ref

  data = np.load(data_path)
  t0 = time.perf_counter()
  torch.manual_seed(1337 + seed)
  train = torch.from_numpy(data["train"])
  val_batches = list(zip(*(torch.from_numpy(data[f"val_{k}"]) for k in ("inputs", "targets", "weights"))))
  model = ref.GPT(vocab=int(data["vocab"]))
  opt = ref.nanogpt_adamw(model, lr=1e-3)

  def lr_at(it, warmup=100, decay=2000, lr=1e-3, min_lr=1e-4):  # nanoGPT's get_lr
    if it < warmup:
      return lr * (it + 1) / (warmup + 1)
    if it > decay:
      return min_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay - warmup))) * (lr - min_lr)

  @torch.no_grad()
  def evaluate():
    model.eval()
    nll = n = 0.0
    for x, y, w in val_batches:
      logits = model.logits(x.long())
      nll += float((F.cross_entropy(logits.flatten(0, 1), y.long().flatten(), reduction="none") * w.flatten()).sum())
      n += float(w.sum())
    model.train()
    return nll / n

  evals, eval_s = [], 0.0
  for it in range(max_steps):
    for group in opt.param_groups:
      group["lr"] = lr_at(it)
    ix = torch.randint(len(train) - ref.BLOCK - 1, (ref.BATCH,))
    x = torch.stack([train[i:i + ref.BLOCK] for i in ix])
    y = torch.stack([train[i + 1:i + 1 + ref.BLOCK] for i in ix])
    loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if (it + 1) % eval_every == 0:
      e0 = time.perf_counter()
      evals.append((it + 1, evaluate()))
      eval_s += time.perf_counter() - e0
      if evals[-1][1] <= target:
        break
  wall = time.perf_counter() - t0
  step, loss = evals[-1] if evals else (max_steps, float("nan"))
  return {"side": "nanogpt", "seed": seed, "reached": loss <= target, "step": step, "loss": loss,
          "tokens": step * ref.BATCH * ref.BLOCK, "wall_s": wall, "train_s": wall - eval_s,
          "torch": f"{torch.__version__}, {torch.get_num_threads()} threads", "load": os.getloadavg()[0]}


class Reached(Exception):
  pass


def run_ours(config, seed: int, eval_tokens: int, target: float) -> dict:
  import jax

  from lm import hooks as hooks_lib
  from lm import train

  rows = config.train.batch_size * config.data.seq_len
  if eval_tokens % rows:
    raise SystemExit(f"--eval_tokens={eval_tokens} is not a whole number of steps of {rows} tokens")
  config.seed = seed
  config.train.progress = False
  config.eval.update(every=eval_tokens // rows, max_batches=0, sample_tokens=0)
  config.checkpoint.every = 10**9
  evals, state = [], {"eval_s": 0.0}
  evaluation = hooks_lib.evaluation

  def timed_evaluation(setup, objective):
    """The loop's own evaluation hook, timed, stopping the run at the target. (A second hook beside it would
    evaluate the last step twice: the loop always evaluates its last step.)"""
    hook = evaluation(setup, objective)

    def fn(info):
      e0 = time.perf_counter()
      result = hook.fn(info)
      state["eval_s"] += time.perf_counter() - e0
      evals.append((info.step, result["loss"]))
      if result["loss"] <= target:
        raise Reached
      return result

    return dataclasses.replace(hook, fn=fn)

  t0 = time.perf_counter()
  hooks_lib.evaluation = timed_evaluation  # lm.hooks.defaults builds the loop's hooks through this name
  with tempfile.TemporaryDirectory() as workdir:
    try:
      train.run(config, workdir)
    except Reached:
      pass
    finally:
      hooks_lib.evaluation = evaluation
  wall = time.perf_counter() - t0
  step, loss = evals[-1] if evals else (config.train.steps, float("nan"))
  return {"side": "ours", "seed": seed, "reached": loss <= target, "step": step, "loss": loss,
          "tokens": step * rows, "wall_s": wall, "train_s": wall - state["eval_s"],
          "jax": f"{jax.__version__}, {jax.devices()[0].device_kind}", "evals": evals, "load": os.getloadavg()[0]}


def _subprocess(side: str, seed: int, data: str) -> dict:
  args = [a for a in sys.argv[1:] if not a.startswith(("--only", "--seed", "--repeats", "--timeout"))]
  cmd = [sys.executable, os.path.abspath(__file__), f"--only={side}", f"--seed={seed}", f"--data={data}", *args]
  try:
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    raise SystemExit(f"{side} seed {seed} ran past --timeout={_TIMEOUT.value} s: is the machine busy? "
                     f"(load average {os.getloadavg()[0]:.1f})") from None
  if out.returncode:
    raise SystemExit(f"{side} seed {seed} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  config, target = _CONFIG.value, _TARGET.value
  if config.data.seq_len != 64 or config.data.name != "tiny_shakespeare":
    raise SystemExit("both sides are evaluated on the same 64-character windows of tiny_shakespeare: keep "
                     "data.seq_len=64 and data.name=tiny_shakespeare")
  torch_every = _EVAL_TOKENS.value // (12 * 64)
  if _ONLY.value == "ours":
    print(json.dumps(run_ours(config, _SEED.value, _EVAL_TOKENS.value, target)))
    return
  if _ONLY.value == "nanogpt":
    print(json.dumps(run_nanogpt(_DATA.value, _SEED.value, torch_every, target, _MAX_TORCH_STEPS.value)))
    return
  import numpy as np
  with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "chars.npz")
    np.savez(data, **char_data(config))
    results = []
    for seed in range(_REPEATS.value):
      for side in ("nanogpt", "ours"):
        r = _subprocess(side, seed, data)
        results.append(r)
        print(f"  {side:<8} seed {seed}: loss {r['loss']:.4f} at step {r['step']} ({r['tokens']:,} tokens), "
              f"{r['wall_s']:.1f} s wall, {r['train_s']:.1f} s without evals; load average {r['load']:.1f}", flush=True)
  print(f"\ntarget: validation loss <= {target} (nats/char, TFDS validation split), evaluated every "
        f"{_EVAL_TOKENS.value:,} training tokens; {_REPEATS.value} alternating pairs")
  print(f"{'side':<8}  {'reached':>7}  {'tokens (median)':>15}  {'wall s (each)':<28}  {'median':>6}  "
        f"{'w/o evals':>9}")
  med = {}
  for side in ("nanogpt", "ours"):
    rs = [r for r in results if r["side"] == side]
    med[side] = statistics.median(r["wall_s"] for r in rs)
    each = " ".join(f"{r['wall_s']:.1f}" for r in rs)
    print(f"{side:<8}  {sum(r['reached'] for r in rs):>4}/{len(rs):<2}  "
          f"{statistics.median(r['tokens'] for r in rs):>15,.0f}  {each:<28}  {med[side]:>6.1f}  "
          f"{statistics.median(r['train_s'] for r in rs):>9.1f}")
  pairs = " ".join(f"{n['wall_s'] / o['wall_s']:.2f}" for n, o in zip(results[::2], results[1::2]))
  print(f"speed-up (nanoGPT / ours): {med['nanogpt'] / med['ours']:.2f}x (ratio of medians); per pair {pairs}")


if __name__ == "__main__":
  app.run(main)
