"""Never destroy a run, never train on the wrong thing silently: each reproducer of the reliability issue ends
with one `error:` line and its exit status, and every file of the previous run is still there and loadable."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from lm import metrics
from lm import runs
from tests.conftest import ROOT, TINY_FLAGS, launch, one_line_error, snapshot


def copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def loadable(run_dir):
  """The run's newest checkpoint restores (the same path sampling, evaluation and init_from use)."""
  setup, params = runs.load(str(run_dir))
  return params is not None and setup.config.model.d_model == 32


def test_override_config_with_another_model_changes_nothing(tmp_path, finished_run):
  run = copy(finished_run, tmp_path / "x")
  before = snapshot(run)
  r = launch(f"--workdir={run}", "--override_config", "--config.model.d_model=64", "--config.train.steps=3")
  one_line_error(r, "does not fit this config", "params/embed/embedding has shape (264, 32) in the checkpoint, "
                 "(264, 64) here", "nothing was changed")
  assert r.stderr.count("\n") < 20, r.stderr  # no asyncio tracebacks on the way
  assert snapshot(run) == before and loadable(run)


def test_text_folder_without_a_path_is_an_error(tmp_path):
  r = launch(f"--workdir={tmp_path / 'run'}", "--config.data.name=text_folder")
  one_line_error(r, "data.name='text_folder' needs data.path")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,needle", [
    ("--config.model.n_layers=1", "layer_1/attn/k is in the checkpoint but not in this model"),
    ("--config.model.position=rope", "pos_embed is in the checkpoint but not in this model"),
])
def test_init_from_must_use_every_param(tmp_path, finished_run, flag, needle):
  r = launch(f"--workdir={tmp_path / 'dst'}", flag, f"--config.checkpoint.init_from={finished_run}",
             "--config.train.steps=1")
  one_line_error(r, needle, "checkpoint.init_fresh", "checkpoint.init_drop")
  assert not (tmp_path / "dst" / "config.json").exists()


def test_init_drop_and_init_fresh_name_the_params_to_leave_out(tmp_path, finished_run):
  r = launch(f"--workdir={tmp_path / 'a'}", "--config.model.n_layers=1", "--config.checkpoint.init_drop=layer_1/*",
             f"--config.checkpoint.init_from={finished_run}", "--config.train.steps=1")
  assert r.returncode == 0, r.stderr[-2000:]
  r = launch(f"--workdir={tmp_path / 'b'}", "--config.model.n_layers=3", "--config.checkpoint.init_fresh=layer_2/*",
             f"--config.checkpoint.init_from={finished_run}", "--config.train.steps=1")
  assert r.returncode == 0, r.stderr[-2000:]


def _truncate_latest(run):
  """Truncate every file of the run's newest checkpoint to half its size (a half-copied checkpoint)."""
  latest = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
  for f in (run / "checkpoints" / str(latest)).rglob("*"):
    if f.is_file() and f.stat().st_size > 8:
      f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  return latest


def test_a_truncated_checkpoint_is_skipped_by_every_reader(tmp_path, finished_run):
  run = copy(finished_run, tmp_path / "x")
  latest = _truncate_latest(run)
  before = snapshot(run)
  r = launch(f"--config.checkpoint={run}", "--config.num_samples=1", "--config.max_new_tokens=5",
             config="configs/sample.py", tiny=False)
  assert r.returncode == 0 and f"checkpoints/{latest} is unreadable" in r.stderr and "Traceback" not in r.stderr, \
      r.stderr[-2000:]
  r = launch(f"--workdir={tmp_path / 'ft'}", f"--config.checkpoint.init_from={run}", "--config.train.steps=1")
  assert r.returncode == 0 and f"checkpoints/{latest} is unreadable" in r.stderr, r.stderr[-2000:]
  data = tmp_path / "in.txt"
  data.write_bytes(b"to be or not to be\n" * 4)
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  enc = subprocess.run([sys.executable, "-m", "lm.compress", "encode", f"--checkpoint={run}", str(data),
                        str(tmp_path / "c.lmac")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert enc.returncode == 0 and "unreadable" in enc.stderr and "Traceback" not in enc.stderr, enc.stderr[-2000:]
  assert snapshot(run) == before  # readers never rename another run's files
  # with every checkpoint unreadable: one line
  for step in (1, 2):
    shutil.rmtree(run / "checkpoints" / str(step))
  r = launch(f"--config.checkpoint={run}", config="configs/sample.py", tiny=False)
  one_line_error(r, "every checkpoint under", "is unreadable")


def test_a_failed_launch_writes_no_config_and_cosmetic_keys_are_not_compared(tmp_path, finished_run):
  run = tmp_path / "new"
  r = launch(f"--workdir={run}", f"--config.checkpoint.init_from={tmp_path / 'missing'}")
  one_line_error(r, "missing")
  assert not (run / "config.json").exists()
  r = launch(f"--workdir={run}", "--config.train.steps=2")  # the corrected command is not refused
  assert r.returncode == 0, r.stderr[-2000:]
  # a finished run continued with other progress, logging, eval and checkpoint cadences is the same run
  done = copy(finished_run, tmp_path / "done")
  r = launch(f"--workdir={done}", "--config.train.steps=3", "--config.checkpoint.every=2", "--config.checkpoint.keep=4",
             "--config.eval.every=7", "--config.train.log_every=3", "--config.train.progress=True",
             "--config.eval.max_batches=2", "--config.eval.batch_size=16")
  assert r.returncode == 0, r.stderr[-2000:]
  # a longer run under the cosine schedule would change the schedule of the steps already taken's successors
  r = launch(f"--workdir={done}", "--config.train.steps=5", "--config.checkpoint.every=1",
             "--config.checkpoint.keep=5", "--config.eval.every=3")
  one_line_error(r, "train.steps: 3 -> 5", "another --workdir", "--override_config")


def test_extending_train_steps_with_a_constant_schedule_resumes(tmp_path, shakespeare):
  run = tmp_path / "run"
  flags = ["--config.train.schedule=constant", "--config.checkpoint.every=2", "--config.eval.every=100"]
  assert launch(f"--workdir={run}", "--config.train.steps=2", *flags).returncode == 0
  r = launch(f"--workdir={run}", "--config.train.steps=4", *flags)
  assert r.returncode == 0 and f"resumed from {run}/checkpoints at step 2" in r.stderr, r.stderr[-2000:]
  assert [e["step"] for e in metrics.read(str(run), "train")] == [1, 2, 3, 4]


def _unshare_ok() -> bool:
  try:
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


def _in_small_fs(size: str, workdir_inside: str, args: list, read_only=False):
  """launch.py in a private mount namespace whose /mnt is a `size` tmpfs (the test's small, full filesystem)."""
  mnt = f"mount -t tmpfs -o size={size} tmpfs /mnt && mkdir -p /mnt/w" + (" && mount -o remount,ro /mnt"
                                                                           if read_only else "")
  cmd = " ".join([sys.executable, str(ROOT / "launch.py"), "--config=configs/pretrain_shakespeare.py",
                  *TINY_FLAGS, f"--workdir=/mnt/w/{workdir_inside}", *args])
  copy_out = "; cp -r /mnt/w/run {out} 2>/dev/null; exit $rc"
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  env.pop("XLA_FLAGS", None)
  return lambda out: subprocess.run(["unshare", "-rm", "sh", "-c", f"{mnt} && {cmd}; rc=$?" +
                                     copy_out.format(out=out)], cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=600)


@pytest.mark.skipif(not _unshare_ok(), reason="needs unshare -rm (user + mount namespaces) for a small tmpfs")
def test_disk_full_stops_at_once_and_the_rerun_resumes(tmp_path, shakespeare):
  run = _in_small_fs("1600k", "run", ["--config.train.steps=40", "--config.checkpoint.every=2",
                                      "--config.checkpoint.keep=40", "--config.eval.every=100"])
  r = run(tmp_path / "copy")
  last = one_line_error(r, "(no space left on device); stopped; last complete checkpoint: step ")
  failed = int(last.split("saving checkpoint ")[1].split()[0])
  complete = int(last.rsplit("step ", 1)[1])
  assert complete < failed < 40
  # the copy of the full filesystem holds the complete checkpoints; rerun with room: it resumes, no temporaries
  copy_dir = tmp_path / "copy"
  r = launch(f"--workdir={copy_dir}", "--config.train.steps=40", "--config.checkpoint.every=2",
             "--config.checkpoint.keep=40", "--config.eval.every=100")
  assert r.returncode == 0 and f"at step {complete}" in r.stderr, r.stderr[-2000:]
  assert not [p for p in (copy_dir / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.mark.skipif(not _unshare_ok(), reason="needs unshare -rm (user + mount namespaces) for a read-only mount")
def test_read_only_filesystem_is_one_line(tmp_path):
  r = _in_small_fs("1m", "run", ["--config.train.steps=2"], read_only=True)(tmp_path / "copy")
  one_line_error(r, "/mnt/w/run", "Read-only file system")


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  one_line_error(launch(f"--workdir={f}", "--config.train.steps=1"), "is a file")
  assert f.read_text() == "x"


def test_no_permission_is_one_line(tmp_path, shakespeare):
  if shutil.which("setpriv") is None or os.geteuid() != 0:
    pytest.skip("needs root and setpriv to run as an unprivileged user")
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o755)
  os.chmod(tmp_path, 0o755)
  env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(tmp_path))
  env.pop("XLA_FLAGS", None)
  cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, str(ROOT / "launch.py"),
         "--config=configs/pretrain_shakespeare.py", *TINY_FLAGS, f"--workdir={locked}/run", "--config.train.steps=1"]
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  one_line_error(r, f"{locked}/run", "Permission denied")


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, shakespeare):
  r = launch(f"--workdir={tmp_path}", "--config.train.steps=30", "--config.checkpoint.every=10",
             "--config.eval.every=100", fault="int:7")
  assert r.returncode == 130, r.stderr[-2000:]
  assert "Traceback" not in r.stderr and "Ctrl-C: saved a checkpoint at step 7" in r.stderr.strip().splitlines()[-1]
  assert "7" in os.listdir(tmp_path / "checkpoints")
  r = launch(f"--workdir={tmp_path}", "--config.train.steps=30", "--config.checkpoint.every=10",
             "--config.eval.every=100")
  assert r.returncode == 0 and "at step 7" in r.stderr


def test_offline_first_run_fails_in_seconds_with_the_fix(tmp_path):
  # A proxy on a closed local port: every download fails at once, and nothing leaves this machine.
  env = {"LM_MANUAL_DIR": "", "LM_TFDS_DIR": str(tmp_path / "tfds"), "HTTPS_PROXY": "http://127.0.0.1:9",
         "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
  t0 = time.time()
  r = launch(f"--workdir={tmp_path / 'run'}", env=env)
  one_line_error(r, "could not download TFDS dataset 'tiny_shakespeare'", "data.manual_dir", "LM_MANUAL_DIR",
                 "make train")
  assert time.time() - t0 < 60


def test_policy_gradient_warns_when_groups_have_no_reward_spread(tmp_path, shakespeare, capsys):
  from lm import train
  from tests.rl.pg_helpers import pg_config
  c = pg_config("grpo", rewards="format:1", reward_args={"format_pattern": "never-matches"}, zero_spread_window=2)
  c.train.steps = 3
  c.eval.every = 100
  train.run(c, str(tmp_path / "run"))
  err = capsys.readouterr().err
  assert "100% of groups had zero reward spread" in err and "digits:1" in err
