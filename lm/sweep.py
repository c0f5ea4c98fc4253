"""Hyperparameter sweeps and ablations on Optuna: trials are ordinary runs, made by the same command a person types.

  python -m lm.sweep experiments/lr_width.py --scale=full --workers=2     # run (or resume) the sweep, then report
  python -m lm.sweep experiments/lr_width.py --storage=postgresql://host/db  # another machine joins the same sweep
  python -m lm.sweep experiments/lr_width.py --print_commands            # one shell line per trial, for a job array
  python -m lm.sweep experiments/lr_width.py --report                    # results.csv, results.md, plots/ only

A sweep file defines `sweep(scale) -> Sweep`: the stages of a trial (each a launch.py run: a config file and
overrides, optionally starting from an earlier stage's params), a space of `--config.` overrides (a grid, or
distributions for a random/TPE search), the seeds, the metric to rank by, and optionally pruning, a `measure`
function (extra metrics of a finished trial, e.g. the coded size of a test file) and a `plot` function.

Bookkeeping is Optuna's: the study lives in an RDB storage (SQLite in the sweep's folder by default, any
SQLAlchemy URL to share it between machines). Grid points are enqueued once, by whoever creates the study, and
each worker pops the next waiting one in a transaction, so every trial runs exactly once. Workers send a
heartbeat; a trial whose worker died is failed once its heartbeat is stale and retried
(RetryHeartbeatStaleTrialCallback) with the same parameters, hence the same run directories, so it resumes from
its checkpoints. A stage whose config and overrides are the same in several trials (the SFT run under several RL
settings) runs once, in a directory named by those overrides, under a file lock.

Layout under <root>/<name>/: optuna.db, runs/<stage>/<overrides>/ (each a launch.py --workdir), trials/<id>.json
(overrides, seed, metrics, wall time, status), results.csv, results.md, plots/*.png.
"""
import argparse
import dataclasses
import difflib
import fcntl
import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from typing import Callable, Optional

from lm.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the space ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Grid:
  values: tuple


@dataclasses.dataclass(frozen=True)
class Dist:
  kind: str  # uniform | loguniform | int | choice
  args: tuple


def grid(*values) -> Grid:
  """Every one of `values` (a grid sweep crosses all grids and seeds)."""
  return Grid(tuple(values))


def uniform(low: float, high: float) -> Dist:
  return Dist("uniform", (float(low), float(high)))


def loguniform(low: float, high: float) -> Dist:
  return Dist("loguniform", (float(low), float(high)))


def int_range(low: int, high: int) -> Dist:
  return Dist("int", (int(low), int(high)))


def choice(*values) -> Dist:
  return Dist("choice", tuple(values))


@dataclasses.dataclass(frozen=True)
class Stage:
  """One run of a trial: `python launch.py --config=<config> --workdir=... --config.<k>=<v> ...`.

  init_from names an earlier stage whose params this one starts from (checkpoint.init_from); links sets other
  config keys to earlier stages' run directories, e.g. {"objective.reward_args.reward_model": "rm"}."""
  name: str
  config: str
  overrides: dict = dataclasses.field(default_factory=dict)
  init_from: str = ""
  links: dict = dataclasses.field(default_factory=dict)

  @property
  def upstream(self) -> dict:
    """{config key: earlier stage} of every run directory this stage reads."""
    return {**({"checkpoint.init_from": self.init_from} if self.init_from else {}), **self.links}


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  stages: tuple  # of Stage, run in order
  space: dict  # "key" (every stage that has it) or "stage:key" -> Grid | Dist
  metric: str  # "<stage>.<eval metric>" of the final eval event, or a key `measure` returns
  direction: str = "minimize"
  seeds: tuple = (0,)
  sampler: str = "grid"  # grid | random | tpe (random/tpe need n_trials; each trial runs every seed)
  n_trials: int = 0
  pruner: str = ""  # "" | median: stop a trial whose stage-`prune_stage` evals are below the median so far
  prune_stage: str = ""
  measure: Optional[Callable] = None  # (trial: dict with "dirs", "params", "seed") -> dict of extra metrics
  plot: Optional[Callable] = None  # (rows: list of dicts, out_dir) -> list of PNG paths
  report: tuple = ()  # more metrics for results.md, beside `metric`

  def definition(self) -> dict:
    """What identifies the sweep's trials (for "the sweep file changed since its trials were made")."""
    enc = lambda v: {"grid": list(v.values)} if isinstance(v, Grid) else {v.kind: list(v.args)}
    stage = lambda s: {k: v for k, v in dataclasses.asdict(s).items() if k != "links" or v}  # as before links
    return {"stages": [stage(s) for s in self.stages], "space": {k: enc(v) for k, v in self.space.items()},
            "metric": self.metric, "direction": self.direction, "seeds": list(self.seeds), "sampler": self.sampler,
            "n_trials": self.n_trials}

  @property
  def is_grid(self) -> bool:
    return self.sampler == "grid"

  def grid_points(self) -> list:
    """Every (params, seed) of a grid sweep, in a fixed order."""
    keys = sorted(self.space)
    points = []
    for values in itertools.product(*(self.space[k].values for k in keys)):
      for seed in self.seeds:
        points.append({**dict(zip(keys, values)), "seed": seed})
    return points


def load(path: str, scale: str) -> tuple:
  """(Sweep, module) from a sweep file's sweep(scale)."""
  if not os.path.isfile(path):
    raise UserError(f"sweep file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"sweep_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  try:
    spec.loader.exec_module(module)
    sw = module.sweep(scale)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot load sweep {path}: {type(e).__name__}: {e}") from None
  check(sw)
  return sw, module


@functools.lru_cache(maxsize=None)
def _config(path: str):
  """A stage's config file's get_config() (read only here: it only answers which keys exist)."""
  spec = importlib.util.spec_from_file_location("stage_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _has(config, key: str) -> bool:
  node = config
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _flat_keys(config, prefix="") -> list:
  out = []
  for k in config.keys():
    v = config[k]
    out += _flat_keys(v, f"{prefix}{k}.") if hasattr(v, "keys") else [f"{prefix}{k}"]
  return out


def check(sw: Sweep):
  """One UserError for a sweep that cannot run: an empty space, an unknown stage or config key, a bad metric."""
  if not sw.stages:
    raise UserError(f"sweep {sw.name}: no stages; give at least one Stage(name, config)")
  names = [s.name for s in sw.stages]
  if len(set(names)) != len(names) or any(":" in n or "." in n for n in names):
    raise UserError(f"sweep {sw.name}: stage names must be unique, without ':' or '.', got {names}")
  empty = [k for k, v in sw.space.items() if (isinstance(v, Grid) and not v.values) or
           (isinstance(v, Dist) and v.kind == "choice" and not v.args)]
  if empty:  # (space={} is a seeds-only sweep: one trial per seed)
    raise UserError(f"sweep {sw.name}: the space is empty: {empty[0]} has no values; give it at least one, e.g. "
                    "grid(3e-4, 1e-3)")
  if not sw.seeds:
    raise UserError(f"sweep {sw.name}: seeds is empty; give at least one seed")
  if sw.sampler not in ("grid", "random", "tpe"):
    raise UserError(f"sweep {sw.name}: sampler={sw.sampler!r} must be grid, random or tpe")
  if sw.is_grid and any(isinstance(v, Dist) for v in sw.space.values()):
    raise UserError(f"sweep {sw.name}: distributions need sampler='random' or 'tpe' (and n_trials)")
  if not sw.is_grid and sw.n_trials < 1:
    raise UserError(f"sweep {sw.name}: sampler={sw.sampler!r} needs n_trials >= 1")
  if sw.direction not in ("minimize", "maximize"):
    raise UserError(f"sweep {sw.name}: direction={sw.direction!r} must be minimize or maximize")
  configs = {}
  for s in sw.stages:
    if not os.path.isfile(os.path.join(ROOT, s.config)):
      raise UserError(f"sweep {sw.name}: stage {s.name}: config {s.config!r} does not exist")
    for key, up in s.upstream.items():
      if up not in names[:names.index(s.name)]:
        raise UserError(f"sweep {sw.name}: stage {s.name}: {key}={up!r} must name an earlier stage")
    configs[s.name] = _config(s.config)
  for s in sw.stages:
    for key in s.overrides:
      _check_key(sw, configs[s.name], key, f"stage {s.name} override")
  for key in sw.space:
    stage, _, k = key.rpartition(":")
    if stage and stage not in configs:
      raise UserError(f"sweep {sw.name}: space key {key!r} names no stage; stages: {', '.join(names)}")
    targets = [configs[stage]] if stage else [c for c in configs.values() if _has(c, k)]
    if not targets:
      _check_key(sw, configs[names[0]], k, "space key")
  if "." not in sw.metric and sw.measure is None:
    raise UserError(f"sweep {sw.name}: metric={sw.metric!r} must be '<stage>.<eval metric>', e.g. "
                    f"'{names[-1]}.bits_per_byte'")


def _check_key(sw, config, key, what):
  if not _has(config, key):
    near = difflib.get_close_matches(key, _flat_keys(config), n=1)
    raise UserError(f"sweep {sw.name}: {what} {key!r} is not a config key" +
                    (f" (did you mean {near[0]}?)" if near else ""))


# ---- naming and the runs of a trial ----------------------------------------------------------------------------

def _value_text(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def slug(params: dict) -> str:
  """A readable, filesystem-safe name for a set of overrides (a hash when it would be too long)."""
  text = ",".join(f"{k.split('.')[-1]}={_value_text(v)}" for k, v in sorted(params.items()))
  text = re.sub(r"[^A-Za-z0-9=,._+-]", "_", text)
  if len(text) > 120:
    text = text[:80] + "-" + hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
  return text or "default"


def stage_overrides(sw: Sweep, params: dict, seed: int) -> dict:
  """{stage: {config key: value}} for one trial: the stage's own overrides, then the space's values."""
  out = {}
  configs = {s.name: _config(s.config) for s in sw.stages}
  for s in sw.stages:
    o = dict(s.overrides)
    for key, value in params.items():
      stage, _, k = key.rpartition(":")
      if stage == s.name or (not stage and _has(configs[s.name], k)):
        o[k] = value
    o.setdefault("seed", seed)  # a stage that pins its seed (a shared pretrained start) keeps it
    out[s.name] = o
  return out


def stage_dirs(sw: Sweep, root: str, overrides: dict) -> dict:
  """{stage: run directory}: named by the stage's overrides and those of the stages it starts from, so trials
  that share an upstream stage share its run."""
  dirs, keys = {}, {}
  for s in sw.stages:
    key = dict(overrides[s.name])
    if s.init_from:
      key["__from"] = keys[s.init_from]
    if s.links:
      key["__links"] = {k: keys[up] for k, up in s.links.items()}
    keys[s.name] = json.dumps(key, sort_keys=True, default=str)
    shown = {k: v for k, v in overrides[s.name].items() if k not in s.overrides or k == "seed"}
    name = slug(shown)
    if s.init_from or s.links:
      ups = keys[s.init_from] if not s.links else json.dumps([key.get("__from"), key["__links"]], sort_keys=True)
      name = f"{name}-from-{hashlib.sha1(ups.encode()).hexdigest()[:8]}"
    dirs[s.name] = os.path.join(root, "runs", s.name, name)
  return dirs


def _flag(key: str, value) -> str:
  if isinstance(value, (tuple, list)):
    value = "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
  return f"--config.{key}={value}"


def stage_command(sw: Sweep, stage: Stage, overrides: dict, dirs: dict) -> list:
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={os.path.join(ROOT, stage.config)}",
         f"--workdir={dirs[stage.name]}"]
  o = dict(overrides[stage.name])
  for key, up in stage.upstream.items():
    o[key] = dirs[up]
  return cmd + [_flag(k, v) for k, v in o.items()]


def _die_with_parent():
  """Children die with their parent (Linux): a killed runner leaves no orphan run behind."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def run_metrics(run_dir: str) -> dict:
  """A finished run's numbers: its last eval event, and the mean of each train metric over the run (train_<k>)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  events = [json.loads(line) for line in open(path) if line.strip()]
  evals = [e for e in events if e["split"] == "eval"]
  out = {k: v for k, v in evals[-1].items() if k != "split"} if evals else {}
  train = [e for e in events if e["split"] == "train"]
  for k in {k for e in train for k, v in e.items() if isinstance(v, (int, float)) and k != "step"}:
    vals = [e[k] for e in train if isinstance(e.get(k), (int, float))]
    out[f"train_{k}"] = sum(vals) / len(vals)
  return out


def last_eval(run_dir: str) -> dict:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  evals = [json.loads(line) for line in open(path) if line.strip()]
  evals = [e for e in evals if e["split"] == "eval"]
  return {k: v for k, v in evals[-1].items() if k != "split"} if evals else {}


def measure_once(run_dir: str, name: str, fn: Callable[[], dict]) -> dict:
  """fn()'s numbers for one run, kept in `<run_dir>.<name>.json`: a stage that many trials share (the pretrained
  start of a KL grid) is measured once, and a rerun after a kill does not measure it again."""
  path = f"{run_dir}.{name}.json"
  if os.path.exists(path):
    return json.load(open(path))
  out = fn()
  with open(path + ".tmp", "w") as f:
    json.dump(out, f, default=float)
  os.replace(path + ".tmp", path)
  return out


def run_stage(sw: Sweep, stage: Stage, overrides: dict, dirs: dict, report=None) -> dict:
  """Run (or resume, or skip if done) one stage under a file lock; {"wall_s", "status", "reason"}."""
  d = dirs[stage.name]
  os.makedirs(os.path.dirname(d), exist_ok=True)
  done_file = d + ".done.json"
  with open(d + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # another trial (or worker) may be making this same run
    if os.path.exists(done_file):
      return json.load(open(done_file))
    cmd = stage_command(sw, stage, overrides, dirs)
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=ROOT)
    with open(d + ".log", "a") as log:
      proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=_die_with_parent)
      pruned = False
      while proc.poll() is None:
        time.sleep(0.5)
        if report is not None and report(last_eval(d)):  # the pruner says stop: SIGTERM saves a checkpoint
          pruned = True
          proc.send_signal(signal.SIGTERM)
          proc.wait()
          break
    wall_file = d + ".wall.json"  # wall time over every invocation (a resumed run adds to it)
    wall = time.time() - t0 + (json.load(open(wall_file))["wall_s"] if os.path.exists(wall_file) else 0.0)
    with open(wall_file, "w") as f:
      json.dump({"wall_s": wall}, f)
    if pruned:
      return {"status": "pruned", "wall_s": wall, "reason": "pruned"}
    if proc.returncode != 0:
      lines = [l for l in open(d + ".log").read().splitlines() if l.strip()]
      errors = [l for l in lines if l.startswith("error:")]
      reason = (errors or lines or [f"exit status {proc.returncode}"])[-1][:300]
      return {"status": "failed", "wall_s": wall, "reason": f"{stage.name}: {reason}"}
    result = {"status": "done", "wall_s": wall, "reason": ""}
    with open(done_file, "w") as f:
      json.dump(result, f)
    return result


# ---- storage and workers ---------------------------------------------------------------------------------------

def _heartbeat() -> tuple:
  """(interval, grace) seconds: how often a worker says it lives, and how long before its trial is retried."""
  return int(os.environ.get("LM_SWEEP_HEARTBEAT", "20")), int(os.environ.get("LM_SWEEP_GRACE", "60"))


def storage(url: str):
  import optuna
  interval, grace = _heartbeat()
  try:
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=5)
    return optuna.storages.RDBStorage(url, heartbeat_interval=interval, grace_period=grace,
                                      heartbeat_stale_trial_callback=retry,
                                      engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                      else None)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot open sweep storage {url!r}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") \
        from None


def _sampler(sw: Sweep):
  import optuna
  if sw.sampler == "tpe":
    return optuna.samplers.TPESampler(seed=0)
  return optuna.samplers.RandomSampler(seed=0)


def _load_study(sw: Sweep, url: str):
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
  return optuna.load_study(study_name=sw.name, storage=storage(url), sampler=_sampler(sw))


def open_study(sw: Sweep, url: str, extend: bool = False):
  """The sweep's Optuna study: created (and its grid enqueued) by the first caller, checked by the others."""
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
  store = storage(url)
  definition = json.loads(json.dumps(sw.definition(), default=str))
  try:
    study = optuna.create_study(study_name=sw.name, storage=store, sampler=_sampler(sw), direction=sw.direction,
                                load_if_exists=False)
    created = True
  except optuna.exceptions.DuplicatedStudyError:
    study = optuna.load_study(study_name=sw.name, storage=store, sampler=_sampler(sw))
    created = False
  if created:
    study.set_user_attr("definition", definition)
    if sw.is_grid:
      for p in sw.grid_points():
        study.enqueue_trial(p, skip_if_exists=True)
    study.set_user_attr("ready", True)
    return study
  for _ in range(600):  # the creator may still be enqueueing
    if study.user_attrs.get("ready"):
      break
    time.sleep(0.1)
  old = study.user_attrs.get("definition")
  if old != definition:
    changes = _definition_diff(old or {}, definition)
    if not extend:
      raise UserError(f"sweep {sw.name} changed since its trials were made ({changes}); pass --extend to add the "
                      "new points to it, or give the sweep another name")
    study.set_user_attr("definition", definition)
    if sw.is_grid:
      for p in sw.grid_points():
        study.enqueue_trial(p, skip_if_exists=True)
  return study


def _definition_diff(old: dict, new: dict) -> str:
  keys = sorted(set(old) | set(new))
  return "; ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys
                   if old.get(k) != new.get(k))


def _suggest(trial, frozen, sw: Sweep) -> tuple:
  """(params, seeds) of a trial: the enqueued grid point (read as is, so that extending a grid does not change
  the distributions Optuna recorded), or a sample of the search space (each seed run within the trial)."""
  if sw.is_grid:
    fixed = dict(frozen.system_attrs["fixed_params"])
    seed = fixed.pop("seed")
    return fixed, [seed]
  params = {}
  for key, v in sorted(sw.space.items()):
    if isinstance(v, Grid) or v.kind == "choice":
      params[key] = trial.suggest_categorical(key, list(v.values if isinstance(v, Grid) else v.args))
    elif v.kind == "int":
      params[key] = trial.suggest_int(key, *v.args)
    else:
      params[key] = trial.suggest_float(key, *v.args, log=v.kind == "loguniform")
  return params, list(sw.seeds)


def _metric(sw: Sweep, metrics: dict):
  value = metrics.get(sw.metric)
  return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_trial(sw: Sweep, module, root: str, params: dict, seeds: list, trial=None) -> dict:
  """Every stage of the trial for each seed, then `measure`; the trial's record (also in trials/<id>.json)."""
  tid = slug({**params, **({"seed": seeds[0]} if len(seeds) == 1 else {})})
  path = os.path.join(root, "trials", tid + ".json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  record = {"id": tid, "params": params, "seeds": seeds, "metrics": {}, "per_seed": [], "wall_s": 0.0,
            "status": "done", "reason": ""}
  for seed in seeds:
    overrides = stage_overrides(sw, params, seed)
    dirs = stage_dirs(sw, root, overrides)
    metrics, status = {}, "done"
    for stage in sw.stages:
      report = _pruning_reporter(sw, trial, stage) if trial is not None and len(seeds) == 1 else None
      result = run_stage(sw, stage, overrides, dirs, report)
      record["wall_s"] += result["wall_s"]
      if result["status"] != "done":
        status, record["reason"] = result["status"], result["reason"]
        break
      metrics.update({f"{stage.name}.{k}": v for k, v in run_metrics(dirs[stage.name]).items()
                      if isinstance(v, (int, float))})
      metrics[f"{stage.name}.wall_s"] = result["wall_s"]
    if status == "done" and sw.measure is not None:
      def timed():
        t0 = time.time()
        out = sw.measure({"dirs": dirs, "params": params, "seed": seed, "overrides": overrides})
        return {"metrics": out, "wall_s": time.time() - t0}
      try:
        m = measure_once(dirs[sw.stages[-1].name], f"measure-{sw.name}", timed)
        metrics.update(m["metrics"])
        record["wall_s"] += m["wall_s"]
      except Exception as e:  # pylint: disable=broad-except  (a failed trial is a row with its reason)
        status, record["reason"] = "failed", f"measure: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    record["per_seed"].append({"seed": seed, "metrics": metrics, "dirs": dirs})
    if status != "done":
      record["status"] = status
      break
  if record["status"] == "done":
    keys = set.intersection(*(set(p["metrics"]) for p in record["per_seed"]))
    record["metrics"] = {k: sum(p["metrics"][k] for p in record["per_seed"]) / len(record["per_seed"])
                         for k in keys}
    if _metric(sw, record["metrics"]) is None:
      record["status"], record["reason"] = "failed", f"metric {sw.metric} is missing or not finite"
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1, default=str)
  os.replace(path + ".tmp", path)
  return record


def _pruning_reporter(sw: Sweep, trial, stage: Stage):
  if not sw.pruner or stage.name != (sw.prune_stage or sw.stages[-1].name):
    return None
  metric = sw.metric.split(".", 1)[1] if sw.metric.startswith(stage.name + ".") else None
  if metric is None:
    return None
  seen = set()

  def report(ev: dict) -> bool:
    if not ev or ev.get("step") in seen or not isinstance(ev.get(metric), (int, float)):
      return False
    seen.add(ev["step"])
    trial.report(float(ev[metric]), int(ev["step"]))
    return trial.should_prune()

  return report


def _heartbeat_thread(study, trial):
  interval, _ = _heartbeat()
  stop = threading.Event()

  def beat():
    while not stop.wait(interval):
      try:
        study._storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access
      except Exception:  # pylint: disable=broad-except  (the next beat tries again)
        pass

  study._storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access
  t = threading.Thread(target=beat, daemon=True)
  t.start()
  return stop


def worker(sw: Sweep, module, root: str, url: str):
  """Pop trials until none is left: waiting ones first (enqueued grid points and retries), then, for a search,
  new samples while fewer than n_trials exist."""
  import optuna
  from optuna.trial import TrialState
  study = _load_study(sw, url)
  while True:
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    live = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED,
                                             TrialState.WAITING)
            or (t.state == TrialState.FAIL and t.user_attrs.get("reason"))]
    if not waiting and (sw.is_grid or len(live) >= sw.n_trials):
      if not [t for t in trials if t.state == TrialState.RUNNING]:
        return
      time.sleep(_heartbeat()[0] / 2)  # others' trials may still fail and come back as waiting ones
      continue
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)  # pylint: disable=protected-access
    if sw.is_grid and "fixed_params" not in frozen.system_attrs:  # another worker took the last waiting trial
      study.tell(trial, state=TrialState.FAIL)
      continue
    stop = _heartbeat_thread(study, trial)
    try:
      params, seeds = _suggest(trial, frozen, sw)
      trial.set_user_attr("params", {**params, **({"seed": seeds[0]} if sw.is_grid else {})})
      record = run_trial(sw, module, root, params, seeds, trial)
    finally:
      stop.set()
    trial.set_user_attr("id", record["id"])
    if record["status"] == "done":
      study.tell(trial, _metric(sw, record["metrics"]))
    elif record["status"] == "pruned":
      study.tell(trial, state=TrialState.PRUNED)
    else:
      trial.set_user_attr("reason", record["reason"])
      study.tell(trial, state=TrialState.FAIL)


# ---- the command -----------------------------------------------------------------------------------------------

def progress(sw: Sweep, root: str, study) -> str:
  from optuna.trial import TrialState
  trials = [t for t in study.get_trials(deepcopy=False) if "fixed_params" in t.system_attrs or not sw.is_grid]
  done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
             (t.state == TrialState.FAIL and "reason" in t.user_attrs) for t in trials)
  running = sum(t.state == TrialState.RUNNING for t in trials)
  total = len(sw.grid_points()) if sw.is_grid else sw.n_trials
  line = f"{sw.name}: {done} done, {running} running, {max(total - done - running, 0)} left"
  complete = [t for t in trials if t.state == TrialState.COMPLETE]
  if complete:
    best = (min if sw.direction == "minimize" else max)(complete, key=lambda t: t.value)
    shown = best.user_attrs.get("params", best.params)
    line += f"; best {sw.metric} {best.value:.4g} ({', '.join(f'{k}={_value_text(v)}' for k, v in shown.items())})"
  return line


def print_commands(sw: Sweep, root: str):
  points = sw.grid_points() if sw.is_grid else None
  if points is None:
    raise UserError("--print_commands needs a grid sweep (a search chooses its points as it goes)")
  for p in points:
    params = {k: v for k, v in p.items() if k != "seed"}
    overrides = stage_overrides(sw, params, p["seed"])
    dirs = stage_dirs(sw, root, overrides)
    print(" && ".join(" ".join(_shell(a) for a in stage_command(sw, s, overrides, dirs)) for s in sw.stages))


def _shell(arg: str) -> str:
  return arg if re.fullmatch(r"[A-Za-z0-9_./=:,+-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m lm.sweep", description=__doc__.splitlines()[0])
  p.add_argument("sweep_file")
  p.add_argument("--scale", default="full", help="the sweep file's scale: smoke (tests) or full")
  p.add_argument("--workers", type=int, default=1, help="local worker processes")
  p.add_argument("--root", default=os.path.join(ROOT, "runs", "sweeps"), help="where sweeps keep their folders")
  p.add_argument("--storage", default="", help="SQLAlchemy URL shared by workers on many machines "
                                                "(default: sqlite in the sweep's folder)")
  p.add_argument("--extend", action="store_true", help="accept a changed sweep file: enqueue its new points")
  p.add_argument("--print_commands", action="store_true", help="print one shell line per trial and exit")
  p.add_argument("--report", action="store_true", help="only write the reports of the trials done so far")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    sw, module = load(args.sweep_file, args.scale)
    root = os.path.join(os.path.abspath(args.root), sw.name + ("" if args.scale == "full" else f"-{args.scale}"))
    os.makedirs(root, exist_ok=True)
    url = args.storage or f"sqlite:///{os.path.join(root, 'optuna.db')}"
    if args.print_commands:
      return print_commands(sw, root)
    if args.worker:
      return worker(sw, module, root, url)
    study = open_study(sw, url, extend=args.extend)
    if not args.report:
      _run_workers(sw, args, root, study)
    from lm import sweep_report
    written = sweep_report.write(sw, root)
    print(f"{progress(sw, root, study)}\nreports: {', '.join(written)}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _run_workers(sw, args, root, study):
  cmd = [sys.executable, "-m", "lm.sweep", args.sweep_file, f"--scale={args.scale}", f"--root={args.root}",
         "--worker"] + ([f"--storage={args.storage}"] if args.storage else [])
  env = dict(os.environ, PYTHONPATH=ROOT)
  procs = [subprocess.Popen(cmd, cwd=os.getcwd(), env=env, preexec_fn=_die_with_parent)
           for _ in range(max(args.workers, 1))]
  last = ""
  while any(p.poll() is None for p in procs):
    line = progress(sw, root, study)
    if line != last:
      print(line, file=sys.stderr, flush=True)
      last = line
    time.sleep(5)
  bad = [p.returncode for p in procs if p.returncode]
  if bad:
    raise UserError(f"{len(bad)} sweep worker(s) stopped with status {bad[0]}; rerun the same command to continue")


if __name__ == "__main__":
  # The sweep file imports lm.sweep; run that module's main, not this __main__ copy, so its classes are the ones
  # the file's Sweep holds.
  from lm import sweep as _sweep
  _sweep.main()
