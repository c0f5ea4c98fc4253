"""A sweep's reports, from its trials/*.json: results.csv (one row per run: overrides, seed, metrics, wall time,
status and reason), results.md (mean ± std over seeds, n) and plots/ (the metric against each swept key, one
line per value of the other keys, error bars over seeds; plus the sweep's own `plot`)."""
import collections
import csv
import glob
import json
import math
import os

import numpy as np


def rows(root: str) -> list:
  """One row per (trial, seed): {"params": {...}, "seed", "status", "reason", "wall_s", "metrics": {...},
  "dirs": {stage: run directory}}."""
  out = []
  for path in sorted(glob.glob(os.path.join(root, "trials", "*.json"))):
    rec = json.load(open(path))
    if not rec["per_seed"]:
      out.append({"params": rec["params"], "seed": rec["seeds"][0], "status": rec["status"], "reason": rec["reason"],
                  "wall_s": rec["wall_s"], "metrics": {}, "dirs": {}})
    for i, p in enumerate(rec["per_seed"]):
      last = i == len(rec["per_seed"]) - 1
      out.append({"params": rec["params"], "seed": p["seed"], "status": rec["status"] if last else "done",
                  "reason": rec["reason"] if last else "", "wall_s": rec["wall_s"] / len(rec["per_seed"]),
                  "metrics": p["metrics"], "dirs": p.get("dirs", {})})
  return out


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def aggregate(rs: list, metrics: list) -> list:
  """Mean, std (ddof=1) and n of each metric over the seeds of each parameter setting (done runs only)."""
  groups = collections.OrderedDict()
  for r in rs:
    groups.setdefault(json.dumps(r["params"], sort_keys=True), []).append(r)
  out = []
  for key, members in groups.items():
    done = [m for m in members if m["status"] == "done"]
    entry = {"params": json.loads(key), "n": len(done), "failed": [m for m in members if m["status"] != "done"],
             "wall_s": float(np.mean([m["wall_s"] for m in members])), "stats": {}}
    for metric in metrics:
      vals = [m["metrics"][metric] for m in done if isinstance(m["metrics"].get(metric), (int, float))]
      if vals:
        entry["stats"][metric] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                                  len(vals))
    out.append(entry)
  return out


def write(sw, root: str) -> list:
  rs = rows(root)
  written = []
  if not rs:
    return written
  keys = sorted({k for r in rs for k in r["params"]})
  metric_keys = sorted({k for r in rs for k in r["metrics"]})
  path = os.path.join(root, "results.csv")
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(keys + ["seed", "status", "reason", "wall_s"] + metric_keys)
    for r in rs:
      w.writerow([r["params"].get(k) for k in keys] + [r["seed"], r["status"], r["reason"], f"{r['wall_s']:.1f}"] +
                 [r["metrics"].get(k, "") for k in metric_keys])
  written.append(path)
  shown = [sw.metric] + [m for m in getattr(sw, "report", ()) if m != sw.metric]
  table = aggregate(rs, shown)
  lines = [f"# {sw.name}", "", f"Mean ± std over seeds (n = runs done); ranked by `{sw.metric}` ({sw.direction}).", "",
           "| " + " | ".join([k.split(":")[-1] for k in keys] + ["n"] + [f"`{m}`" for m in shown] + ["wall s"]) + " |",
           "|" + "---|" * (len(keys) + len(shown) + 2)]
  sign = 1 if sw.direction == "minimize" else -1
  table.sort(key=lambda e: sign * e["stats"].get(sw.metric, (math.inf * sign, 0, 0))[0])
  for e in table:
    cells = [_fmt(e["params"].get(k)) for k in keys] + [str(e["n"])]
    for m in shown:
      mean, std, n = e["stats"].get(m, (None, None, 0))
      cells.append("–" if mean is None else f"{mean:.4g} ± {std:.2g}" if n > 1 else f"{mean:.4g}")
    cells.append(f"{e['wall_s']:.0f}")
    lines.append("| " + " | ".join(cells) + " |")
  failed = [(e["params"], f) for e in table for f in e["failed"]]
  if failed:
    lines += ["", "Runs that did not finish:", ""]
    lines += [f"- {', '.join(f'{k}={_fmt(v)}' for k, v in p.items())}, seed {f['seed']}: {f['status']}"
              f"{' — ' + f['reason'] if f['reason'] else ''}" for p, f in failed]
  path = os.path.join(root, "results.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  written.append(path)
  plots = os.path.join(root, "plots")
  os.makedirs(plots, exist_ok=True)
  written += default_plots(sw, table, keys, plots)
  if sw.plot is not None:
    written += list(sw.plot(rs, plots) or [])
  return written


def save_figure(fig, out_dir: str, name: str) -> str:
  """Lay out, write <out_dir>/<name>.png at a size that keeps committed plots small, close; the path."""
  import matplotlib.pyplot as plt
  fig.tight_layout()
  path = os.path.join(out_dir, f"{name}.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def default_plots(sw, table: list, keys: list, out_dir: str) -> list:
  """The metric against each swept key, one line per combination of the other keys, error bars over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out = []
  for key in keys:
    others = [k for k in keys if k != key]
    lines = collections.defaultdict(list)
    for e in table:
      if sw.metric in e["stats"]:
        label = ", ".join(f"{k.split('.')[-1]}={_fmt(e['params'][k])}" for k in others)
        lines[label].append((e["params"][key], *e["stats"][sw.metric][:2]))
    if not lines:
      continue
    fig, ax = plt.subplots(figsize=(6, 4))
    xs_all = sorted({p[0] for pts in lines.values() for p in pts}, key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(x, (int, float)) for x in xs_all)
    for label, pts in sorted(lines.items()):
      pts.sort(key=lambda p: (isinstance(p[0], str), p[0]))
      x = [p[0] if numeric else xs_all.index(p[0]) for p in pts]
      ax.errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=label or None)
    if numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
      ax.set_xscale("log")
    if not numeric:
      ax.set_xticks(range(len(xs_all)), [str(x) for x in xs_all])
    ax.set_xlabel(key)
    ax.set_ylabel(sw.metric)
    ax.set_title(f"{sw.name}: {sw.metric} (mean ± std over seeds)")
    if any(lines):
      ax.legend(fontsize=7)
    out.append(save_figure(fig, out_dir, f"{sw.metric.replace('.', '_')}_vs_{key.replace(':', '_').replace('.', '_')}"))
  return out
