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


@pytest.mark.parametrize("mesh,rows", [("single", 8), ("data8", 1), ("fsdp8", 1), ("tensor8", 8), ("2x2x2", 2)])
def test_batches_are_split_over_data_and_fsdp(sharded, mesh, rows):
  """A global batch of 8 rows: sharded over (data, fsdp), each device holding 8 / (data x fsdp) rows."""
  assert sharded[mesh]["batch_spec"] == [["data", "fsdp"]]
  assert sharded[mesh]["rows_per_device"] == [rows] and sharded[mesh]["batch_devices"] == sharded[mesh]["devices"]


# Written by hand from the rules table of configs/base.py (lm/sharding.py RULES), not derived from it: a changed
# rule must show up here.
TENSOR8 = {"['embed']['embedding']": ["tensor", "fsdp"], "['pos_embed']": [None, "fsdp"],
           "['layer_0']['attn']['q']": ["fsdp", "tensor", None],
           "['layer_0']['attn']['k']": ["fsdp", "tensor", None], "['layer_0']['attn']['v']": ["fsdp", "tensor", None], "['layer_0']['attn']['o']": ["tensor", None, "fsdp"],
           "['layer_0']['mlp']['up']['kernel']": ["fsdp", "tensor"],
           "['layer_0']['mlp']['down']['kernel']": ["tensor", "fsdp"],
           "['layer_0']['ln_attn']['scale']": ["fsdp"], "['ln_final']['scale']": ["fsdp"]}


@pytest.mark.parametrize("mesh", ["tensor8", "fsdp8"])
def test_param_specs_match_a_table_written_by_hand(sharded, mesh):
  got = sharded[mesh]["param_specs"]
  for path, spec in TENSOR8.items():  # the same names on both meshes: a size-1 axis still appears in the spec
    assert got[path] == spec, (mesh, path, got[path])


def test_es_population_over_8_devices_gives_the_single_device_update(sharded):
  single, data8 = sharded["es"]["single"], sharded["es"]["data8"]
  assert len(single) == len(data8) == 2 and single[0]["fitness_std"] > 0
  for a, b in zip(single, data8):
    assert a["fitness_mean"] == b["fitness_mean"] and a["fitness_std"] == b["fitness_std"]
    np.testing.assert_allclose([b["loss"], b["update_norm"]], [a["loss"], a["update_norm"]], rtol=1e-5)
