"""Shared fixtures. Tests run offline: TFDS's tiny_shakespeare is prepared from ../shared/data/tinyshakespeare."""
import fcntl
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("LM_TFDS_DIR", str(ROOT / ".tfds"))
os.environ.setdefault("LM_MANUAL_DIR", str((ROOT / ".." / "shared" / "data" / "tinyshakespeare").resolve()))
# Tests compile the same tiny models many times, in this process and in launch.py subprocesses: JAX's persistent
# compilation cache turns a 12 s launch into 4 s (measured). Set before anything imports jax.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def tiny_config(**overrides):
  """The default config shrunk to a tiny, fast model; overrides use dotted keys."""
  from configs import base
  c = base.get_config()
  c.model.update(d_model=32, n_layers=2, n_heads=4, max_len=32)
  c.data.seq_len = 32
  c.train.update(steps=10, batch_size=8, warmup_steps=2, log_every=1, progress=False)
  c.eval.update(every=5, batch_size=8, max_batches=2, sample_tokens=0)
  c.checkpoint.update(every=5, keep=3)
  return apply_overrides(c, overrides)


def apply_overrides(c, overrides: dict):
  """Set dotted keys, e.g. {"model.d_model": 64}, as --config.model.d_model=64 would."""
  from lm import config as config_lib
  return config_lib.override(c, overrides)


@pytest.fixture(scope="session")
def shakespeare():
  """Prepare tiny_shakespeare once per machine (a file lock keeps parallel workers from racing)."""
  from configs import base
  from lm.data import sources
  data_cfg = base.get_config().data
  os.makedirs(os.environ["LM_TFDS_DIR"], exist_ok=True)
  with open(os.path.join(os.environ["LM_TFDS_DIR"], ".prepare.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    sources.source(data_cfg, "train")
  return data_cfg


TINY_FLAGS = ["--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.max_len=32",
              "--config.data.seq_len=32", "--config.train.batch_size=8", "--config.train.warmup_steps=2",
              "--config.train.log_every=1", "--config.train.progress=False", "--config.eval.batch_size=8",
              "--config.eval.max_batches=1", "--config.eval.sample_tokens=0"]


def launch(*args, env=None, config="configs/pretrain_shakespeare.py", tiny=True, timeout=600, fault=None):
  """Run launch.py in a subprocess (with `fault`, tests/faults.py's injected fault); returns CompletedProcess."""
  import subprocess
  import sys
  full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
  full_env.pop("XLA_FLAGS", None)
  entry = [str(ROOT / "tests" / "faults.py"), fault] if fault else [str(ROOT / "launch.py")]
  cmd = [sys.executable, *entry, f"--config={config}", *(TINY_FLAGS if tiny else []), *args]
  return subprocess.run(cmd, env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, shakespeare):
  """A finished tiny pretraining run (TINY_FLAGS, 3 steps, a checkpoint at every step). Copy it before changing it."""
  d = tmp_path_factory.mktemp("finished") / "run"
  r = launch(f"--workdir={d}", "--config.train.steps=3", "--config.checkpoint.every=1", "--config.checkpoint.keep=5",
             "--config.eval.every=3")
  assert r.returncode == 0, r.stderr[-2000:]
  return d


def snapshot(directory) -> dict:
  """{relative path: sha256} of every file under `directory`: what "nothing was changed" compares."""
  import hashlib
  root = pathlib.Path(directory)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(r, *needles, status=2):
  """The process ended with exactly one `error:` line on stderr (the last), holding every needle; no traceback."""
  assert r.returncode == status, (r.returncode, r.stderr[-2000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), r.stderr[-2000:]
  assert sum(line.startswith("error: ") for line in r.stderr.splitlines()) == 1
  for n in needles:
    assert n in last, last
  return last


def cached_decode(apply, params, cfg, tokens, prefill: int, cache_len: int):
  """Logits [B, T, V] of `tokens` decoded with the KV cache: `prefill` tokens in one call, then one at a time
  (for comparison with one full forward pass)."""
  import jax.numpy as jnp
  import numpy as np
  from lm import model as model_lib
  b, t = tokens.shape
  cache = model_lib.init_cache(cfg, b, cache_len)
  pos, seg = jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.ones((b, t), jnp.int32)
  logits, cache = apply({"params": params}, tokens[:, :prefill], pos[:, :prefill], seg[:, :prefill], cache=cache)
  steps = [logits]
  for i in range(prefill, t):
    logits, cache = apply({"params": params}, tokens[:, i:i + 1], pos[:, i:i + 1], seg[:, i:i + 1], cache=cache)
    steps.append(logits)
  return np.concatenate(steps, 1)
