"""The train loop end to end: exact resume after SIGKILL / SIGTERM / a corrupt checkpoint, NaN handling."""
import os
import shutil

import numpy as np
import pytest

from lm import metrics
from tests.conftest import launch

RUN = ["--config.train.steps=30", "--config.eval.every=10", "--config.checkpoint.every=10"]


def events(workdir):
  """Metrics with wall-clock fields dropped: what must match bit for bit."""
  return [{k: v for k, v in e.items() if k != "tokens_per_s"} for e in metrics.read(workdir)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, shakespeare):
  d = tmp_path_factory.mktemp("straight")
  r = launch(f"--workdir={d}", *RUN)
  assert r.returncode == 0, r.stderr[-2000:]
  return d


def test_straight_run_trains_and_writes_the_workdir(straight):
  ev = events(straight)
  train = [e for e in ev if e["split"] == "train"]
  evals = [e for e in ev if e["split"] == "eval"]
  assert [e["step"] for e in train] == list(range(1, 31))
  assert [e["step"] for e in evals] == [10, 20, 30]
  assert train[-1]["loss"] < train[0]["loss"] and all("lr" in e for e in train)
  assert all(e["bits_per_byte"] > 0 for e in evals)
  assert (straight / "config.json").exists() and (straight / "tb").is_dir()
  assert sorted(os.listdir(straight / "checkpoints"), key=lambda s: int(s) if s.isdigit() else -1)[-3:] == \
      ["10", "20", "30"]


@pytest.mark.parametrize("fault", ["step:15", "save:20"])
def test_sigkill_then_rerun_equals_straight_run(straight, tmp_path, fault):
  killed = launch(f"--workdir={tmp_path}", *RUN, fault=fault)
  assert killed.returncode == -9
  resumed = launch(f"--workdir={tmp_path}", *RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  # it really resumed: from 10 (killed at 15), or from 10 or 20 (killed while 20 was being written)
  assert any(f"resumed from {tmp_path}/checkpoints at step {n}" in resumed.stderr
             for n in ([10] if fault == "step:15" else [10, 20])), resumed.stderr[-2000:]
  assert events(tmp_path) == events(straight)


def test_sigterm_saves_a_checkpoint_then_resume_is_exact(straight, tmp_path):
  r = launch(f"--workdir={tmp_path}", *RUN, fault="term:13")
  assert r.returncode == 143 and "saved a checkpoint at step 13" in r.stderr
  assert "13" in os.listdir(tmp_path / "checkpoints")
  r = launch(f"--workdir={tmp_path}", *RUN)
  assert r.returncode == 0, r.stderr[-2000:]
  assert events(tmp_path) == events(straight)


def test_corrupt_latest_checkpoint_falls_back_to_previous(straight, tmp_path):
  # the straight run's workdir as it was at step 20 (checkpoints 10 and 20), then checkpoint 20 garbled
  shutil.copytree(straight, tmp_path, dirs_exist_ok=True)
  shutil.rmtree(tmp_path / "checkpoints" / "30")
  metrics.truncate_after(str(tmp_path / "metrics.jsonl"), 20)
  files = [f for f in (tmp_path / "checkpoints" / "20").rglob("*") if f.is_file()]
  assert files
  for f in files:
    f.write_bytes(b"\x00garbage" * 3)
  r = launch(f"--workdir={tmp_path}", *RUN)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "checkpoints/20 is unreadable" in r.stderr and "at step 10" in r.stderr
  assert events(tmp_path) == events(straight)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, shakespeare):
  r = launch(f"--workdir={tmp_path}", "--config.train.steps=30", "--config.checkpoint.every=1",
             "--config.eval.every=100", "--config.train.lr=1e30", "--config.train.grad_clip=0",
             "--config.train.warmup_steps=0")
  assert r.returncode == 2
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: non-finite loss/gradient at step ") and "last good checkpoint" in line
  bad_step = int(line.split("at step ")[1].split()[0])
  steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert steps and max(steps) < bad_step


def test_nonfinite_skip_leaves_params_untouched():
  import jax
  import jax.numpy as jnp
  import optax
  from lm import step as step_lib

  def loss_fn(params, batch, rng):  # NaN exactly when the batch says so
    loss = jnp.sum(params["w"] ** 2) + jnp.where(batch["poison"] > 0, jnp.nan, 0.0)
    return loss, {}

  opt = optax.sgd(0.1)
  step = jax.jit(step_lib.make_train_step(loss_fn, opt, lambda s: 0.1, skip_nonfinite=True))
  params = {"w": jnp.ones(3)}
  state = step_lib.TrainState(params=params, opt_state=opt.init(params), step=jnp.zeros((), jnp.int32),
                              rng=jax.random.PRNGKey(0))
  state, m = step(state, {"poison": jnp.ones(())})
  assert float(m["finite"]) == 0.0 and int(state.step) == 1
  np.testing.assert_array_equal(state.params["w"], np.ones(3))
  state, m = step(state, {"poison": jnp.zeros(())})
  assert float(m["finite"]) == 1.0
  np.testing.assert_allclose(state.params["w"], 0.8 * np.ones(3), rtol=1e-6)


def test_resume_with_dropout_restores_the_rng(tmp_path, shakespeare):
  """With dropout, every step's masks come from the run's RNG: a resumed run matches the straight one only if the
  checkpoint's RNG (not a fresh key) is restored."""
  run = [*RUN, "--config.model.dropout=0.2"]
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  assert launch(f"--workdir={straight}", *run).returncode == 0
  killed = launch(f"--workdir={resumed}", *run, fault="step:15")
  assert killed.returncode == -9
  r = launch(f"--workdir={resumed}", *run)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"resumed from {resumed}/checkpoints at step 10" in r.stderr
  assert events(resumed) == events(straight)


@pytest.mark.parametrize("kind", ["pretrain", "sft", "grpo"])
def test_train_step_and_evaluation_compile_once_ahead_of_the_params(kind, tmp_path, shakespeare, caplog):
  """lm/train.py compiles the train step from step.abstract_state in a thread while the params initialise, and the
  evaluation before the first step: the loop's own calls must reuse both executables (one lowering each), or that
  work was wasted."""
  import logging

  import jax

  from lm import evaluate, hooks, train
  from tests.conftest import tiny_config
  from tests.rl.pg_helpers import pg_config
  from tests.test_sft import sft_config
  short = {"train.steps": 2, "eval.every": 2}
  config = {"pretrain": lambda: tiny_config(**short), "sft": lambda: sft_config(tmp_path, **short),
            "grpo": pg_config}[kind]()
  caplog.set_level(logging.WARNING, logger="jax._src.interpreters.pxla")
  lowered = lambda: [(r.getMessage().split(" with ")[0], r.threadName) for r in caplog.records
                     if r.getMessage().startswith("Compiling jit(")]
  after_step_1 = []  # what had been lowered when the first step ended (no evaluation has run yet)
  first_step = hooks.Hook(lambda info: after_step_1.extend(lowered()) if info.step == 1 else None, at_end=False)
  evaluate._jit_nll_sums.clear_cache()  # an earlier test in this process may have compiled it for this model
  jax.config.update("jax_log_compiles", True)  # globally: a `with` context would not reach the compile thread
  try:
    train.run(config, str(tmp_path / "run"), hooks=[first_step])
  finally:
    jax.config.update("jax_log_compiles", False)
  names = [name for name, _ in lowered()]
  assert names.count("Compiling jit(step)") == 1, names
  assert names.count("Compiling jit(_nll_sums)") == 1, names
  assert [t for name, t in lowered() if name == "Compiling jit(step)"][0].startswith("compile_ahead")
  assert ("Compiling jit(_nll_sums)", "MainThread") in after_step_1, after_step_1
