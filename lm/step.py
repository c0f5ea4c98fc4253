"""The train state and the one train step every objective shares: loss -> grads -> optimizer update.

`make_train_step` is pure; `jit_train_step` is the one way it is compiled (training, dry run, benchmarks):
donated state, in/out shardings, the CPU compiler options. `abstract_state` describes a run's state without
allocating it (the dry run, and the train loop's compile ahead of the params).
"""
import concurrent.futures

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lm import checkpoint as ckpt_lib
from lm import cpu
from lm import lora
from lm import sharding


@flax.struct.dataclass
class TrainState:
  params: dict
  opt_state: optax.OptState
  step: jax.Array  # optimizer-loop steps taken (int32 scalar)
  rng: jax.Array  # the run's base key; step k's randomness is fold_in(rng, k)

  def to_dict(self) -> dict:
    """The checkpointed form (a plain dict, so checkpoints do not depend on this class)."""
    return {"params": self.params, "opt_state": self.opt_state, "step": self.step, "rng": self.rng}

  @classmethod
  def from_dict(cls, d: dict) -> "TrainState":
    return cls(**d)


def init_state(setup, optimizer, params, seed: int) -> TrainState:
  """Fresh, sharded train state around `params` (already placed): moments for the trainable params (all but a
  LoRA base, lm/lora.py), sharded like them, step 0."""
  trainable = lora.split(params)[0]
  opt_shard = sharding.opt_state_shardings(optimizer, trainable, shardings(trainable), setup.mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_shard)(trainable)
  rep = sharding.replicated(setup.mesh)
  return TrainState(params=params, opt_state=opt_state, step=jax.device_put(jnp.zeros((), jnp.int32), rep),
                    rng=jax.device_put(jax.random.fold_in(jax.random.PRNGKey(seed), 3), rep))


def abstract_state(setup, objective, optimizer) -> TrainState:
  """The run's TrainState as sharded ShapeDtypeStructs (jax.eval_shape): what init_state would build, unallocated."""
  mesh = setup.mesh
  params = setup.abstract_params(sharded=True)
  if objective.init_params is not None:  # extra heads: replicated unless they say otherwise
    params = _placed(jax.eval_shape(objective.init_params, jax.random.PRNGKey(0), params), mesh)
  trainable = lora.split(params)[0]
  opt_shard = sharding.opt_state_shardings(optimizer, trainable, shardings(trainable), mesh)
  opt = ckpt_lib.abstract(jax.eval_shape(optimizer.init, trainable), opt_shard)
  rep = sharding.replicated(mesh)
  return TrainState(params=params, opt_state=opt, step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
                    rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep))


def shardings(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def compile_ahead(setup, jitted, *abstract_args) -> concurrent.futures.Future:
  """Lower and compile `jitted` for abstract args in a thread; a later call of `jitted` on arrays of those shapes
  and shardings reuses the executable. XLA compiles without the GIL, so this overlaps what the caller does
  meanwhile (the params' init and its own compile). JAX options the caller set in a `with` block are per thread
  too: under one, the first call compiles again (right, only slower)."""
  def work():
    with setup.use():  # the mesh and logical-axis rules are per thread
      return jitted.lower(*abstract_args).compile()

  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile_ahead")
  future = pool.submit(work)
  pool.shutdown(wait=False)
  return future


def _placed(tree, mesh):
  """Abstract leaves without a sharding (new heads) -> replicated over the mesh."""
  rep = sharding.replicated(mesh)
  return jax.tree.map(lambda x: x if getattr(x, "sharding", None) is not None else
                      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def make_train_step(loss_fn, optimizer, schedule, grad_accum: int = 1, skip_nonfinite: bool = False,
                    updates_per_step: int = 1):
  """(state, batch) -> (state, metrics). With grad_accum > 1, the batch's rows are split into micro-batches
  whose gradients are averaged.

  With updates_per_step > 1, the batch's rows are split into that many consecutive slices and each slice is one
  optimizer update (PPO's epochs x minibatches over one rollout); the loop's step, and so resume, counts batches.
  """
  # Gradients and updates cover the trainable params only; a LoRA base (lm/lora.py) passes through untouched.
  grad_fn = jax.value_and_grad(lambda trainable, frozen, b, r: loss_fn(lora.join(trainable, frozen), b, r),
                               has_aux=True)

  def step(state: TrainState, batch):
    params, frozen = lora.split(state.params)
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum == 1:
      (loss, metrics), grads = grad_fn(params, frozen, batch, rng)
    else:
      micro = slices(batch, grad_accum)

      def body(acc, xs):
        i, mb = xs
        (l, m), g = grad_fn(params, frozen, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, (l, m, g)), None

      zero = jax.tree.map(jnp.zeros_like,
                          jax.eval_shape(grad_fn, params, frozen, jax.tree.map(lambda x: x[0], micro), rng))
      zero = (zero[0][0], zero[0][1], zero[1])
      (loss, metrics, grads), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
      loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, (loss, metrics, grads))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # keep the old params and moments; the step counter still advances past the bad batch
      new_params, opt_state = _where(finite, new_params, params), _where(finite, opt_state, state.opt_state)
    new = state.replace(params=lora.join(new_params, frozen), opt_state=opt_state, step=state.step + 1)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "update_norm": optax.global_norm(updates),
               "lr": schedule(state.step),
               "finite": finite.astype(jnp.float32)}
    return new, metrics

  if updates_per_step == 1:
    return step

  def multi_step(state: TrainState, batch):
    chunks = slices(batch, updates_per_step)

    def body(s, xs):
      i, chunk = xs
      new, m = step(s.replace(rng=jax.random.fold_in(state.rng, i)), chunk)
      return new.replace(step=s.step, rng=s.rng), m

    new, ms = jax.lax.scan(body, state, (jnp.arange(updates_per_step), chunks))
    return new.replace(step=state.step + 1), jax.tree.map(lambda x: x.mean(0), ms)

  return multi_step


def jit_train_step(step, state_shardings, mesh):
  """The one way a train step is compiled (training, dry run, benchmark): donated state, CPU options."""
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0,
                 compiler_options=cpu.compiler_options())


def slices(batch, n: int):
  """[rows, ...] -> [n, rows / n, ...]: consecutive row slices to scan over (micro-batches or PPO minibatches)."""
  return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def _where(cond, a, b):
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)
