"""Rollouts split over devices and processes (tests/rollout_check.py in subprocesses): 2 processes x 4 devices on
127.0.0.1 sample each of the 16 rows exactly once (2 per device, the processes' halves apart, no row data
exchanged) and make the same rollout as 1 process with 8 devices, to the bit; 1 device samples the same tokens."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.test_multihost import _free_port

pytestmark = pytest.mark.slow


def _start(out, devices, *args):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=str(ROOT))
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return subprocess.Popen([sys.executable, str(ROOT / "tests" / "rollout_check.py"), str(out), *args], env=env,
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
  d = tmp_path_factory.mktemp("rollouts")
  port = _free_port()
  procs = [_start(d / "one.npz", 8), _start(d / "two.npz", 4, f"--coordinator=127.0.0.1:{port}", "--process_id=0"),
           _start(d / "unused.npz", 4, f"--coordinator=127.0.0.1:{port}", "--process_id=1"),
           _start(d / "single_device.npz", 1)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  return {name: dict(np.load(d / f"{name}.npz")) for name in ("one", "two", "single_device")}


def test_each_row_is_sampled_once_by_its_own_device_and_process(rollouts):
  two = rollouts["two"]
  # [process, step, device] -> (device id, first row, rows): 2 rows per device, the devices' slices tile 0..16
  sampled = two["sampled"]
  assert sampled.shape == (2, 2, 4, 3)
  for step in range(2):
    rows = sorted((int(first), int(n)) for first, n in sampled[:, step, :, 1:].reshape(-1, 2))
    assert rows == [(2 * i, 2) for i in range(8)]
    assert sorted(sampled[0, step, :, 1]) == [0, 2, 4, 6] and sorted(sampled[1, step, :, 1]) == [8, 10, 12, 14]
  assert two["scored"].tolist() == [[8, 8], [8, 8]]  # each process computes the rewards of its 8 rows only
  assert rollouts["one"]["scored"].tolist() == [[16, 16]]
  # the sampler's only exchange between devices: one boolean per decode step (has every row ended?)
  assert two["collectives"].tolist() == ["all-reduce of pred[]"]


def test_two_processes_make_the_one_process_rollout(rollouts):
  one, two = rollouts["one"], rollouts["two"]
  keys = [k for k in one if k.startswith(("0/", "1/"))]
  assert "0/tokens" in keys and "1/advantages" in keys and "0/stat/reward_mean" in keys
  assert one["0/tokens"].shape == (16, 19) and int(one["devices"]) == int(two["devices"]) == 8
  for k in keys:
    np.testing.assert_array_equal(two[k], one[k], err_msg=k)
  assert not np.array_equal(one["0/tokens"], one["1/tokens"])


def test_one_device_samples_the_same_tokens(rollouts):
  """Each row's randomness is a function of its global index, not of the device that samples it."""
  one, single = rollouts["one"], rollouts["single_device"]
  assert int(single["devices"]) == 1
  for step in range(2):
    np.testing.assert_array_equal(single[f"{step}/tokens"], one[f"{step}/tokens"])
    np.testing.assert_allclose(single[f"{step}/old_logprobs"], one[f"{step}/old_logprobs"], atol=1e-5)
