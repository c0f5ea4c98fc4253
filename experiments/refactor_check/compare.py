"""Compare two chains of runs (same_losses.sh) event by event: losses, gradient norms and eval metrics must be
identical; rollout statistics, which the old code averaged as float32 batch columns, equal to float32 rounding."""
import json, sys
A, B = sys.argv[1], sys.argv[2]
ok = True
for run in ("pt", "sft", "grpo", "ppo"):
  ev = lambda d: [json.loads(l) for l in open(f"{d}/{run}/metrics.jsonl")]
  a, b = ev(A), ev(B)
  exact = ("loss", "bits_per_byte", "exact_match", "pass@1", "pg_loss", "value_loss", "kl_loss", "grad_norm")
  stats = ("kl_coef", "reward_mean", "zero_spread_frac", "rollout_kl_k3")  # were float32 batch columns, now host floats
  n = diff = 0
  for x, y in zip(a, b):
    assert (x["step"], x["split"]) == (y["step"], y["split"])
    for k in exact + stats:
      if k in x:
        n += 1
        same = x[k] == y.get(k) if k in exact else abs(x[k] - y[k]) <= 1e-6 * max(1, abs(y[k]))
        if not same:
          diff += 1
          if diff <= 3: print(run, x["step"], x["split"], k, x[k], y.get(k))
  tl = [e for e in a if e["split"] == "train"]
  print(f"{run}: {len(a)} events ({len(tl)} train, steps {tl[0]['step']}..{tl[-1]['step']}), {n} values compared, {diff} differ")
  ok &= diff == 0 and len(a) == len(b)
print("IDENTICAL" if ok else "DIFFERENT")
