"""The one train loop, for every objective: init or resume, then step, log, hooks, checkpoint, until done.

What it builds on: lm/setup.py (config -> model, mesh, params), lm/objectives (the loss and each step's batch),
lm/step.py (the jitted train step), lm/checkpoint.py, lm/metrics.py, lm/workdir.py (the run directory), and
lm/hooks.py for everything else that happens between steps (evaluation, samples, tests' fault injection).
"""
import contextlib
import logging
import sys
import time

import jax
from tqdm import tqdm

from lm import checkpoint as ckpt_lib
from lm import hooks as hooks_lib
from lm import metrics as metrics_lib
from lm import objectives
from lm import optim
from lm import sharding
from lm import step as step_lib
from lm import workdir as workdir_lib
from lm.errors import UserError
from lm.setup import Setup

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
  pass


def initial_params(setup, objective):
  """The run's starting params: fresh, or config.checkpoint.init_from's; the objective sees them first (to keep
  a frozen reference), then adds its heads."""
  config = setup.config
  key = jax.random.PRNGKey(config.seed)
  if config.checkpoint.init_from:
    ck = config.checkpoint
    params = setup.init_from(ck.init_from, jax.random.fold_in(key, 1), fresh=ck.init_fresh, drop=ck.init_drop)
  else:
    params = setup.init_params(jax.random.fold_in(key, 1))
  if objective.on_start is not None:
    objective.on_start(params)
  if objective.init_params is not None:
    params = objective.init_params(jax.random.fold_in(key, 2), params)
  return params


def run(config, workdir: str, allow_config_change: bool = False, hooks=()) -> dict:
  """Train `config` in `workdir` (resuming if it holds checkpoints). Returns the final eval metrics.

  `hooks` (lm.hooks.Hook) run after the default ones (evaluation, the final sample)."""
  setup = Setup(config)
  config = setup.config  # with a Hugging Face init_from, its architecture is in model.* (config.json records it)
  run_dir = workdir_lib.Workdir(workdir, config, allow_config_change)
  t = config.train
  interrupts = workdir_lib.Interrupts()
  with setup.use(), interrupts, contextlib.ExitStack() as stack:
    objective = objectives.build(setup)
    optimizer, schedule = optim.make_optimizer(t)
    make_step = lambda shardings: step_lib.jit_train_step(
        step_lib.make_train_step(objective.loss_fn, optimizer, schedule, t.grad_accum,
                                 skip_nonfinite=t.nonfinite == "skip", updates_per_step=objective.updates_per_step),
        shardings, setup.mesh)
    # The train step compiles from the state's shapes while the params initialise, and the evaluation beside it
    # (speedrun: the first step 2-3 s sooner, its first evaluation ~1 s shorter, measured); the loop's first call
    # picks the executable up.
    abstract = step_lib.abstract_state(setup, objective, optimizer)
    train_step = make_step(step_lib.shardings(abstract))
    compiling = step_lib.compile_ahead(setup, train_step, abstract,
                                       sharding.abstract_batch(objective.batch_shapes(), setup.mesh))
    state = step_lib.init_state(setup, optimizer, initial_params(setup, objective), config.seed)
    state_shardings = step_lib.shardings(state)
    ckpt = run_dir.checkpointer(config.checkpoint.keep)
    stack.callback(lambda: ckpt.close(quiet=sys.exc_info()[0] is not None))
    state, start, resumed = _resume(ckpt, state, state_shardings, objective)
    all_hooks = [*hooks_lib.defaults(setup, objective), *hooks]
    for hook in all_hooks:
      if hook.ahead is not None:
        hook.ahead(abstract)
    compiling.result()  # its errors (a config the step cannot trace, say) surface here
    if step_lib.shardings(abstract) != state_shardings:  # a bug in abstract_state; the run is still right
      log.warning("the state's shardings differ from abstract_state's; compiling the train step again")
      train_step = make_step(state_shardings)

    def save(step, eval_result=None):
      meta = {"step": step, "data": {"next_step": step}, "config": run_dir.flat_config}
      if objective.get_state is not None:
        meta["objective"] = objective.get_state()
      best = {"bits_per_byte": eval_result["bits_per_byte"]} if eval_result and "bits_per_byte" in eval_result \
          else None
      ckpt.save(step, state.to_dict(), meta, metrics=best)

    tokens_per_step = t.batch_size * config.data.seq_len
    bar = stack.enter_context(tqdm(total=t.steps, initial=start, dynamic_ncols=True, file=sys.stderr,
                                   disable=not t.progress or jax.process_index() != 0))
    writer, last_eval, pending, t0, t_steps = None, None, None, time.time(), 0
    step = start
    try:
      while step < t.steps and not interrupts.requested:  # a signal stops the run at a step boundary
        data = objective.batches(step, state.params)
        state, m = train_step(state, sharding.global_batch(data.rows, setup.mesh))
        step += 1
        if writer is None:  # training really started: the workdir now holds this run
          run_dir.write_config()
          writer = metrics_lib.Writer(workdir, resume_step=start if resumed else None)
          stack.callback(writer.close)
        t_steps += 1
        ckpt.check_saved()
        # Read the previous step's metrics only now, so the host never waits on the step it just dispatched.
        if pending is not None:
          _check_finite(*pending, config, ckpt)
        pending = (step, m)
        if step % t.log_every == 0 or step == t.steps:
          m_host = jax.device_get(m)
          _check_finite(step, m_host, config, ckpt)
          dt = time.time() - t0
          writer.write(step, "train", {**{k: v for k, v in m_host.items() if k != "finite"}, **data.stats,
                                       "tokens_per_s": tokens_per_step * t_steps / max(dt, 1e-9)})
          bar.set_postfix(loss=f"{float(m_host['loss']):.4f}", tok_s=f"{tokens_per_step * t_steps / dt:,.0f}")
          t0, t_steps = time.time(), 0
        bar.update(1)
        info = hooks_lib.StepInfo(step=step, last=step == t.steps, state=state, metrics=m, setup=setup,
                                  objective=objective, writer=writer, checkpointer=ckpt)
        for hook in all_hooks:
          if not hook.after_checkpoint and hook.due(step, info.last):
            info.results.update(hook.fn(info) or {})
        if "bits_per_byte" in info.results:
          last_eval = info.results
        if step % config.checkpoint.every == 0 or step == t.steps or interrupts.requested:
          _check_finite(step, jax.device_get(m), config, ckpt)  # never write a non-finite state
          save(step, info.results)
        for hook in all_hooks:
          if hook.after_checkpoint and hook.due(step, info.last):
            hook.fn(info)
      if pending is not None:
        _check_finite(*pending, config, ckpt)
    except OSError as e:  # writing metrics, events or the config failed (a full disk, say)
      ckpt.check_saved()  # a failed checkpoint save is the root cause when there is one
      raise UserError(f"writing to {workdir} failed at step {step} ({e.strerror or e}); stopped; last complete "
                      f"checkpoint: {ckpt.last_complete()}") from None
    if interrupts.requested:
      if step not in ckpt.steps() and ckpt.pending != step:
        save(step)
      ckpt.wait()
      raise interrupts.stopped(f"saved a checkpoint at step {step} in {ckpt.directory}; rerun the same command "
                               "to resume")
  return last_eval or {}


def _resume(ckpt, state, state_shardings, objective):
  """(state, start step, resumed?) from the newest readable checkpoint of the run, if it has one."""
  restored = ckpt.restore_latest(ckpt_lib.abstract(state.to_dict(), state_shardings.to_dict()))
  if restored is None:
    return state, 0, False
  state, meta = step_lib.TrainState.from_dict(restored[0]), restored[1]
  if objective.set_state is not None and "objective" in meta:
    objective.set_state(meta["objective"])
  if jax.process_index() == 0:
    print(f"resumed from {ckpt.directory} at step {int(state.step)}", file=sys.stderr)
  return state, int(state.step), True


def _check_finite(step, m, config, ckpt):
  if float(m["finite"]) < 1.0:
    if config.train.nonfinite == "skip":
      log.warning("step %d: non-finite loss or gradient; update skipped", step)
      return
    last = ckpt.steps()[-1] if ckpt.steps() else None
    raise NonFiniteError(
        f"non-finite loss/gradient at step {step} (training batch {step - 1} of seed {config.seed}); "
        f"stopped without saving; last good checkpoint: {'step ' + str(last) if last is not None else 'none'}; "
        "lower train.lr or set --config.train.nonfinite=skip")
