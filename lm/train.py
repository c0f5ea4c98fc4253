"""The one train loop, for every objective: init or resume, jitted step, eval, checkpoints, metrics.

Reading order: `run` (top to bottom) -> `make_train_step` -> `init_state`.
"""
import json
import logging
import os
import signal
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from lm import checkpoint as ckpt_lib
from lm import config as config_lib
from lm import cpu
from lm import evaluate
from lm import metrics as metrics_lib
from lm import model as model_lib
from lm import objectives
from lm import sampling
from lm import sharding
from lm import tokenizer as tokenizer_lib
from lm.data import lm_batches
from lm.errors import Preempted, UserError

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
  pass


# Fault injection for the resume tests: "step:N", "save:N" (SIGKILL right after dispatching step N, or while
# checkpoint N is being written) or "term:N" (SIGTERM after step N).
_FAULT = os.environ.get("LM_FAULT_AT", "")


def _fault(where: str, step: int):
  if _FAULT == f"{where}:{step}":
    os.kill(os.getpid(), signal.SIGTERM if where == "term" else signal.SIGKILL)


def make_optimizer(t):
  decay_steps = t.decay_steps or t.steps
  if t.schedule == "constant":
    schedule = optax.join_schedules([optax.linear_schedule(0.0, t.lr, t.warmup_steps), optax.constant_schedule(t.lr)],
                                    [t.warmup_steps])
  else:
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.lr, t.warmup_steps, max(decay_steps, t.warmup_steps + 1),
                                                  end_value=t.min_lr)
  # Decay matrices only: norms, biases (and other vectors) are left alone, as in nanoGPT and most LLM recipes.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  optimizer = optax.chain(
      optax.clip_by_global_norm(t.grad_clip) if t.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask))
  return optimizer, schedule


def make_train_step(loss_fn, optimizer, schedule, grad_accum: int = 1, skip_nonfinite: bool = False,
                    updates_per_step: int = 1):
  """state, batch -> state, metrics. With grad_accum > 1, the batch's rows are split into micro-batches.

  With updates_per_step > 1, the batch's rows are split into that many consecutive slices and each slice is one
  optimizer update (PPO's epochs x minibatches over one rollout); the loop's step, and so resume, counts batches.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, batch):
    params = state["params"]
    rng = jax.random.fold_in(state["rng"], state["step"])
    if grad_accum == 1:
      (loss, metrics), grads = grad_fn(params, batch, rng)
    else:
      micro = _slices(batch, grad_accum)

      def body(acc, xs):
        i, mb = xs
        (l, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, (l, m, g)), None

      zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng))
      zero = (zero[0][0], zero[0][1], zero[1])
      (loss, metrics, grads), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
      loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, (loss, metrics, grads))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": state["step"] + 1,
           "rng": state["rng"]}
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # keep the old params and moments; the step counter still advances past the bad batch
      new = {**new, "params": _where(finite, new["params"], params),
             "opt_state": _where(finite, new["opt_state"], state["opt_state"])}
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "finite": finite.astype(jnp.float32)}
    return new, metrics

  if updates_per_step == 1:
    return step

  def multi_step(state, batch):
    chunks = _slices(batch, updates_per_step)

    def body(s, xs):
      i, chunk = xs
      new, m = step({**s, "rng": jax.random.fold_in(state["rng"], i)}, chunk)
      return {**new, "step": s["step"], "rng": s["rng"]}, m

    new, ms = jax.lax.scan(body, state, (jnp.arange(updates_per_step), chunks))
    return {**new, "step": state["step"] + 1}, jax.tree.map(lambda x: x.mean(0), ms)

  return multi_step


def jit_train_step(step, state_shardings, mesh):
  """The one way a train step is compiled (training, dry run, benchmark): donated state, CPU options."""
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0,
                 compiler_options=cpu.compiler_options())


def _slices(batch, n: int):
  """[rows, ...] -> [n, rows / n, ...]: consecutive row slices to scan over (micro-batches or PPO minibatches)."""
  return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def _where(cond, a, b):
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def strip_boxes(tree):
  """Logical-axis boxes -> plain values, without the sharding constraint nn.unbox applies under a mesh."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


class Setup:
  """What every entry point (train, sample, dry run, compress) builds from a config."""

  def __init__(self, config):
    config_lib.validate(config)
    self.config = config
    self.tokenizer = tokenizer_lib.get(config.tokenizer)
    self.model = model_lib.build(config.model)
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.rules(config.mesh)

  def abstract_params(self, boxed=False):
    dummy = jnp.zeros((1, min(8, self.config.model.max_len)), jnp.int32)
    abstract = jax.eval_shape(lambda r: self.model.init(r, dummy)["params"], jax.random.PRNGKey(0))
    return abstract if boxed else strip_boxes(abstract)

  def param_shardings(self):
    return sharding.param_shardings(self.abstract_params(boxed=True), self.mesh, self.rules)

  def init_params(self, rng):
    dummy = jnp.zeros((1, min(8, self.config.model.max_len)), jnp.int32)
    init = jax.jit(lambda r: nn.unbox(self.model.init(r, dummy)["params"]), out_shardings=self.param_shardings())
    return init(rng)

  def load_params(self, path):
    return ckpt_lib.load_params(path, ckpt_lib.abstract(self.abstract_params(), self.param_shardings()))


def init_state(setup: Setup, optimizer, objective):
  """Fresh, sharded train state: params (from init, a pretrained checkpoint, or the objective), moments, step, rng."""
  config = setup.config
  key = jax.random.PRNGKey(config.seed)
  if config.checkpoint.init_from:
    params = setup.load_params(config.checkpoint.init_from)
  else:
    params = setup.init_params(jax.random.fold_in(key, 1))
  if objective.init_params is not None:
    params = objective.init_params(jax.random.fold_in(key, 2), params)
  p_shard = jax.tree.map(lambda x: x.sharding, params)
  opt_shard = sharding.opt_state_shardings(optimizer, params, p_shard, setup.mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_shard)(params)
  rep = sharding.replicated(setup.mesh)
  return {"params": params, "opt_state": opt_state, "step": jax.device_put(jnp.zeros((), jnp.int32), rep),
          "rng": jax.device_put(jax.random.fold_in(key, 3), rep)}


def _check_workdir_config(workdir, config, allow_change: bool):
  path = os.path.join(workdir, "config.json")
  new = config_lib.to_flat(config)
  if os.path.exists(path) and not allow_change:
    with open(path) as f:
      old = config_lib.flatten(json.load(f))
    diff = config_lib.diff(old, new)
    if diff:
      raise UserError(f"workdir {workdir} holds a run with a different config ({'; '.join(diff)}); "
                      "use another --workdir, or pass --override_config to continue it with this config")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
    os.replace(path + ".tmp", path)


class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some test runners): no handler
      pass

  def _handle(self, signum, frame):
    self.requested = True


def run(config, workdir: str, allow_config_change: bool = False) -> dict:
  """Train `config` in `workdir` (resuming if it holds checkpoints). Returns the final eval metrics."""
  setup = Setup(config)
  _check_workdir_config(workdir, config, allow_config_change)
  t, mesh = config.train, setup.mesh
  preemption = _Preemption()

  with sharding.use(mesh, setup.rules):
    objective = objectives.get(config.objective.name).build(config, setup.model, setup.tokenizer)
    optimizer, schedule = make_optimizer(t)
    eval_tokens = lm_batches.split_tokens(config.data, config.data.eval_split, setup.tokenizer)
    state = init_state(setup, optimizer, objective)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)

    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                                 best_metric="bits_per_byte")
    restored = ckpt.restore_latest(ckpt_lib.abstract(state, state_shardings))
    start = 0
    if restored is not None:
      state, meta = restored
      start = int(state["step"])
      if objective.set_state is not None and "objective" in meta:
        objective.set_state(meta["objective"])
      if jax.process_index() == 0:
        print(f"resumed from {ckpt.directory} at step {start}", file=sys.stderr)
    writer = metrics_lib.Writer(workdir, resume_step=start if restored is not None else None)

    train_step = jit_train_step(make_train_step(objective.loss_fn, optimizer, schedule, t.grad_accum,
                                                skip_nonfinite=t.nonfinite == "skip",
                                                updates_per_step=objective.updates_per_step),
                                state_shardings, mesh)

    def evaluate_now(step):
      batches = lm_batches.eval_batches(eval_tokens, config.data.seq_len, config.eval.batch_size,
                                        config.eval.max_batches)
      result = evaluate.bits_per_byte(setup.model, state["params"], batches, setup.tokenizer, mesh)
      if objective.evaluate is not None:
        result.update(objective.evaluate(state["params"], step))
      writer.write(step, "eval", result)
      return result

    def save(step, eval_result=None):
      meta = {"step": step, "data": {"next_step": step}, "config": config_lib.to_flat(config)}
      if objective.get_state is not None:
        meta["objective"] = objective.get_state()
      ckpt.save(step, state, meta, metrics={"bits_per_byte": eval_result["bits_per_byte"]} if eval_result else None)

    tokens_per_step = t.batch_size * config.data.seq_len
    bar = tqdm(total=t.steps, initial=start, disable=not t.progress or jax.process_index() != 0,
               dynamic_ncols=True, file=sys.stderr)
    last_eval, pending, t0, t_steps = None, None, time.time(), 0
    step = start
    try:
      while step < t.steps:
        batch = sharding.global_batch(objective.batches(step, state["params"]), mesh)
        state, m = train_step(state, batch)
        step += 1
        _fault("step", step)
        t_steps += 1
        # Read the previous step's metrics only now, so the host never waits on the step it just dispatched.
        if pending is not None:
          _check_finite(*pending, config, ckpt)
        pending = (step, m)
        if step % t.log_every == 0 or step == t.steps:
          m_host = jax.device_get(m)
          _check_finite(step, m_host, config, ckpt)
          dt = time.time() - t0
          writer.write(step, "train", {**{k: v for k, v in m_host.items() if k != "finite"},
                                       "tokens_per_s": tokens_per_step * t_steps / max(dt, 1e-9)})
          bar.set_postfix(loss=f"{float(m_host['loss']):.4f}", tok_s=f"{tokens_per_step * t_steps / dt:,.0f}")
          t0, t_steps = time.time(), 0
        bar.update(1)
        eval_now = step % config.eval.every == 0 or step == t.steps
        if eval_now:
          last_eval = evaluate_now(step)
          bar.write(f"step {step}: eval loss {last_eval['loss']:.4f}, bits/byte {last_eval['bits_per_byte']:.4f}")
        _fault("term", step)
        if step % config.checkpoint.every == 0 or step == t.steps or preemption.requested:
          _check_finite(step, jax.device_get(m), config, ckpt)  # never write a non-finite state
          save(step, last_eval if eval_now else None)
          _fault("save", step)
        if preemption.requested:
          ckpt.wait()
          raise Preempted(f"SIGTERM: saved a checkpoint at step {step} in {ckpt.directory}; rerun the same "
                          "command to resume")
      if pending is not None:
        _check_finite(*pending, config, ckpt)
      if config.eval.sample_tokens and jax.process_index() == 0 and step == t.steps:
        text = sample_text(setup, state["params"], config.eval.sample_prompt, config.eval.sample_tokens,
                           jax.random.PRNGKey(config.seed))
        bar.write(f"--- sample ---\n{text}\n---")
    finally:
      bar.close()
      ckpt.close()
      writer.close()
  return last_eval or {}


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


def sample_text(setup: Setup, params, prompt: str, n_tokens: int, rng, temperature=0.8, top_k=0) -> str:
  """Sample n_tokens after prompt; past the model's context, keep the last half-context as the prompt."""
  tok, max_len = setup.tokenizer, setup.config.model.max_len
  ids = list(tok.encode(prompt))
  out, chunk = [], max(1, max_len // 2)
  while len(out) < n_tokens:
    context = (ids + out)[-(max_len - chunk):]
    rng, sub = jax.random.split(rng)
    res = sampling.generate(setup.model, params, [np.asarray(context, np.int32)], sub, min(chunk, n_tokens - len(out)),
                            temperature=temperature, top_k=top_k, eos_id=tok.eos_id, pad_id=tok.pad_id,
                            prompt_len=max_len - chunk)
    new = np.asarray(res["tokens"][0])[np.asarray(res["mask"][0])].tolist()
    out += new
    if not new or new[-1] == tok.eos_id:
      break
  return prompt + tok.decode(np.asarray(out, np.int32))
