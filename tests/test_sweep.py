"""lm/sweep.py on tiny runs: a sweep end to end, a killed sweep resumed equal to an uninterrupted one, two workers
sharing one SQLite storage run every trial once, and bad input as one line."""
import csv
import os
import signal
import subprocess
import sys
import textwrap
import time


from tests.conftest import ROOT, one_line_error

TINY = {"model.d_model": 16, "model.n_layers": 1, "model.max_len": 32, "data.seq_len": 32, "train.batch_size": 8,
        "eval.batch_size": 8, "eval.max_batches": 1, "eval.sample_tokens": 0, "train.progress": False}


def sweep_file(tmp_path, name="tiny", steps=6, lrs=(1e-3, 3e-3), seeds=(0,), extra=""):
  path = tmp_path / f"{name}.py"
  overrides = {**TINY, "train.steps": steps, "train.warmup_steps": 1, "eval.every": steps, "checkpoint.every": 3}
  path.write_text(textwrap.dedent(f"""
      from lm.sweep import Stage, Sweep, grid
      def sweep(scale):
        return Sweep(name={name!r}, stages=(Stage("pretrain", "configs/pretrain_shakespeare.py", {overrides!r}),),
                     space={{"train.lr": grid(*{lrs!r})}}, seeds={seeds!r}, metric="pretrain.bits_per_byte"{extra})
      """))
  return path


def run_sweep(path, root, *args, env=None, wait=True):
  full_env = dict(os.environ, PYTHONPATH=str(ROOT), LM_SWEEP_HEARTBEAT="1", LM_SWEEP_GRACE="3", **(env or {}))
  full_env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, "-m", "lm.sweep", str(path), f"--root={root}", *args]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
  return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)


def results(root, name):
  with open(os.path.join(root, name, "results.csv")) as f:
    return list(csv.DictReader(f))


def test_killed_sweep_resumes_and_equals_an_uninterrupted_one(tmp_path, shakespeare):
  path = sweep_file(tmp_path, steps=24, lrs=(1e-3, 3e-3, 1e-2))
  straight = run_sweep(path, tmp_path / "straight")
  assert straight.returncode == 0, straight.stderr[-3000:]
  root = tmp_path / "killed"
  proc = run_sweep(path, root, wait=False)
  runs = root / "tiny" / "runs" / "pretrain"
  deadline = time.time() + 300
  while time.time() < deadline:  # one trial finished and the next one has a checkpoint
    done = list(runs.glob("*.done.json")) if runs.exists() else []
    ckpts = [c for d in runs.glob("*") if d.is_dir() and not (runs / (d.name + ".done.json")).exists()
             for c in (d / "checkpoints").glob("*") if c.name.isdigit()] if runs.exists() else []
    if done and ckpts:
      break
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)  # the runner, its workers and their runs, as a dying machine would
  proc.wait()
  finished_before = {p.name[:-len(".done.json")]: (runs / (p.name[:-len(".done.json")] + ".log")).stat().st_size
                     for p in runs.glob("*.done.json")}
  assert finished_before and len(finished_before) < 3
  resumed = run_sweep(path, root)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for name, size in finished_before.items():  # finished trials were not rerun: no new launch wrote to their log
    assert (runs / (name + ".log")).stat().st_size == size
  logs = [p.read_text() for p in runs.glob("*.log")]
  assert sum("resumed from" in log for log in logs) >= 1  # the interrupted one continued from its checkpoint
  key = lambda rows: sorted((r["train.lr"], r["pretrain.bits_per_byte"], r["pretrain.loss"]) for r in rows)
  assert key(results(root, "tiny")) == key(results(tmp_path / "straight", "tiny"))
  assert len(results(root, "tiny")) == 3


def test_two_workers_on_one_storage_run_every_trial_once(tmp_path, shakespeare):
  import optuna
  from optuna.trial import TrialState
  path = sweep_file(tmp_path, lrs=(1e-3, 2e-3), seeds=(0, 1))
  r = run_sweep(path, tmp_path, "--workers=2")
  assert r.returncode == 0, r.stderr[-3000:]
  study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/tiny/optuna.db")
  trials = study.get_trials()
  complete = [t for t in trials if t.state == TrialState.COMPLETE]
  points = sorted((t.system_attrs["fixed_params"]["train.lr"], t.system_attrs["fixed_params"]["seed"])
                  for t in complete)
  assert points == sorted((lr, s) for lr in (1e-3, 2e-3) for s in (0, 1))  # each once, none twice
  assert not [t for t in trials if t.state != TrialState.COMPLETE and "fixed_params" in t.system_attrs]
  for log in (tmp_path / "tiny" / "runs" / "pretrain").glob("*.log"):
    assert "resumed from" not in log.read_text()  # no run was started twice


def test_bad_sweeps_are_one_line(tmp_path):
  bad_key = sweep_file(tmp_path, name="badkey", extra="")
  bad_key.write_text(bad_key.read_text().replace('"train.lr": grid', '"train.lrr": grid'))
  one_line_error(run_sweep(bad_key, tmp_path), "space key 'train.lrr' is not a config key (did you mean train.lr?)")
  empty = sweep_file(tmp_path, name="empty", lrs=())
  one_line_error(run_sweep(empty, tmp_path), "the space is empty")
  ok = sweep_file(tmp_path, name="ok")
  one_line_error(run_sweep(ok, tmp_path, "--storage=sqlite:////nonexistent/dir/x.db"), "cannot open sweep storage")


def test_a_changed_sweep_file_is_refused_unless_extended(tmp_path, shakespeare):
  path = sweep_file(tmp_path, lrs=(1e-3,))
  assert run_sweep(path, tmp_path).returncode == 0
  path = sweep_file(tmp_path, lrs=(1e-3, 3e-3))
  one_line_error(run_sweep(path, tmp_path), "changed since its trials were made", "space", "--extend")
  r = run_sweep(path, tmp_path, "--extend")
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(float(row["train.lr"]) for row in results(tmp_path, "tiny")) == [1e-3, 3e-3]


def test_print_commands_gives_one_launch_line_per_trial(tmp_path):
  path = sweep_file(tmp_path, lrs=(1e-3, 3e-3), seeds=(0, 1))
  r = run_sweep(path, tmp_path, "--print_commands")
  lines = r.stdout.strip().splitlines()
  assert r.returncode == 0 and len(lines) == 4
  assert all("launch.py" in l and "--config.train.lr=" in l and "--workdir=" in l for l in lines)


def test_measure_once_measures_a_shared_stage_once(tmp_path):
  from lm.sweep import measure_once
  calls = []
  run = tmp_path / "runs" / "sft" / "seed=0"
  run.mkdir(parents=True)
  run = str(run)
  fn = lambda: calls.append(1) or {"exact_match": 0.5}
  assert measure_once(run, "accuracy4-500", fn) == {"exact_match": 0.5}
  assert measure_once(run, "accuracy4-500", fn) == {"exact_match": 0.5}  # a second trial, or a rerun
  assert len(calls) == 1
  assert measure_once(run, "accuracy4-100", fn) == {"exact_match": 0.5} and len(calls) == 2  # another measure
