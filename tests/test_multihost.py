"""Two JAX processes on 127.0.0.1 (4 simulated devices each) reproduce the 1-process, 8-device run, and the
2-process checkpoint resumes in 1 process."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from lm import metrics
from tests.conftest import ROOT, TINY_FLAGS

pytestmark = pytest.mark.slow

TINY = [*TINY_FLAGS, "--config.train.decay_steps=20", "--config.eval.every=3", "--config.checkpoint.every=3"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, steps, devices, extra=(), process=None):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=str(ROOT))
  cmd = [sys.executable, str(ROOT / "launch.py"), "--config=configs/pretrain_shakespeare.py", f"--workdir={workdir}",
         f"--config.train.steps={steps}", *TINY, *extra]
  if process is not None:
    cmd += [f"--coordinator_address=127.0.0.1:{process[0]}", "--num_processes=2", f"--process_id={process[1]}"]
  return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(*procs):
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]


def _losses(workdir, split="train"):
  return {e["step"]: e["loss"] for e in metrics.read(workdir, split)}


def test_two_processes_match_one_and_resume_in_one(tmp_path, shakespeare):
  straight, multi = tmp_path / "straight", tmp_path / "multi"
  port = _free_port()
  _wait(_launch(straight, 9, 8), _launch(multi, 6, 4, process=(port, 0)), _launch(multi, 6, 4, process=(port, 1)))
  a, b = _losses(straight), _losses(multi)
  assert sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], rtol=1e-5)
  np.testing.assert_allclose(_losses(multi, "eval")[6], _losses(straight, "eval")[6], rtol=1e-5)
  assert sorted(os.listdir(multi / "checkpoints"))[-1] == "6"

  # the 2-process checkpoint, resumed by one process on 8 devices, continues the same run
  _wait(_launch(multi, 9, 8, extra=["--override_config"]))
  b = _losses(multi)
  assert sorted(b) == list(range(1, 10))
  np.testing.assert_allclose([b[s] for s in range(7, 10)], [a[s] for s in range(7, 10)], rtol=1e-5)
