"""Sharded training equals the single-device run: meshes on 8 simulated CPU devices, and 2 processes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT


def _env(n_devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
  env["PYTHONPATH"] = str(ROOT)
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


@pytest.fixture(scope="module")
def sharded(shakespeare):
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "sharded_check.py")], env=_env(8), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("mesh", ["data8", "fsdp8", "tensor8", "2x2x2"])
def test_sharded_losses_equal_single_device(sharded, mesh):
  ref = np.array(sharded["single"]["losses"])
  got = np.array(sharded[mesh]["losses"])
  assert sharded[mesh]["devices"] == 8 and sharded["single"]["devices"] == 1 and len(ref) == len(got) == 5
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert ref[-1] < ref[0]  # it trains


@pytest.mark.parametrize("mesh", ["single", "data8", "fsdp8", "tensor8", "2x2x2"])
def test_params_and_moments_carry_rule_shardings(sharded, mesh):
  assert sharded[mesh]["bad_shardings"] == []
  # on every mesh with a >1 axis that the rules use for params, some params really are split
  assert (sharded[mesh]["sharded_params"] > 0) == (mesh in ("fsdp8", "tensor8", "2x2x2"))
