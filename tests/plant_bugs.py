"""Plant each of the realistic bugs the suite once let through, one at a time, in a copy of the tree, and check
that the test file meant to catch it fails:

  python tests/plant_bugs.py            # all of them (about 10 minutes on 2 cores)
  python tests/plant_bugs.py 3 8        # some of them

Prints one line per bug (CAUGHT or MISSED) and exits 1 if any was missed.
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (what, file, old text, new text, the tests that must fail); old/new may be tuples of several places
BUGS = [
    ("PPO's clipped surrogate with maximum and minimum swapped", "lm/rl/losses.py",
     "return jnp.maximum(loss, clipped_loss), ratio", "return jnp.minimum(loss, clipped_loss), ratio",
     "tests/rl/test_losses.py"),
    ("PPO's value clipping with the wrong sign", "lm/rl/losses.py",
     "v_clip = old_values + jnp.clip(values - old_values, -clip, clip)",
     "v_clip = old_values - jnp.clip(values - old_values, -clip, clip)", "tests/rl/test_losses.py"),
    ("PPO's value loss taking the min instead of the max", "lm/rl/losses.py",
     "return 0.5 * jnp.maximum(unclipped, clipped)", "return 0.5 * jnp.minimum(unclipped, clipped)",
     "tests/rl/test_losses.py"),
    ("gradient accumulation dividing by grad_accum**2", "lm/step.py",
     "jax.tree.map(lambda x: x / grad_accum, (loss, metrics, grads))",
     "jax.tree.map(lambda x: x / grad_accum**2, (loss, metrics, grads))", "tests/test_step.py"),
    ("bits per byte divided by tokens instead of bytes", "lm/evaluate.py",
     '"bits_per_byte": total["nll"] / math.log(2) / max(total["bytes"], 1.0)',
     '"bits_per_byte": total["nll"] / math.log(2) / max(total["tokens"], 1.0)', "tests/test_evaluate.py"),
    ("the restored RNG replaced by a fresh key", "lm/train.py",
     "state, meta = step_lib.TrainState.from_dict(restored[0]), restored[1]",
     "state, meta = step_lib.TrainState.from_dict({**restored[0], 'rng': jax.random.PRNGKey(1)}), restored[1]",
     "tests/test_train.py::test_resume_with_dropout_restores_the_rng"),
    ("the batch replicated instead of sharded over data x fsdp", "lm/sharding.py",
     'return NamedSharding(mesh, P(("data", "fsdp")))', "return NamedSharding(mesh, P())",
     "tests/test_sharding.py"),
    ("a sharding rule changed (mlp -> unsharded)", "lm/sharding.py",
     'heads="tensor", kv_heads="tensor", mlp="tensor"', 'heads="tensor", kv_heads="tensor", mlp=None',
     "tests/test_sharding.py"),
    ("the compressor's encoder and decoder using a context one byte stale (consistently: it round-trips)",
     "lm/compression.py",
     ("jnp.asarray(lanes[:, k, t:t + 1])", "jnp.asarray(lanes[:, k, t - 1:t])"),
     ("jnp.asarray(lanes[:, k, max(t - 1, 0):max(t - 1, 0) + 1])",
      "jnp.asarray(lanes[:, k, max(t - 2, 0):max(t - 2, 0) + 1])"), "tests/test_compression.py"),
    ("resume that skips a checkpoint's batch (data from step + 1)", "lm/train.py",
     "data = objective.batches(step, state.params)", "data = objective.batches(step + int(resumed), state.params)",
     "tests/test_train.py::test_sigkill_then_rerun_equals_straight_run"),
]


def plant(index: int) -> bool:
  what, path, old, new, tests = BUGS[index]
  with tempfile.TemporaryDirectory() as tmp:
    tree = os.path.join(tmp, "tree")
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", "runs", ".git", "__pycache__", ".jax_cache",
                                                              ".hypothesis", ".pytest_cache"))
    for p in (".tfds",):  # prepared data: reuse, don't copy
      if os.path.exists(os.path.join(ROOT, p)):
        shutil.rmtree(os.path.join(tree, p), ignore_errors=True)
        os.symlink(os.path.join(ROOT, p), os.path.join(tree, p))
    file = os.path.join(tree, path)
    text = open(file).read()
    # a bug planted at several places (e.g. encoder and decoder alike) lists them as tuples
    for o, n in zip(*((old, new) if isinstance(old, tuple) else ((old,), (new,)))):
      if text.count(o) < 1:
        raise SystemExit(f"bug {index + 1} ({what}): {o!r} is not in {path}; update tests/plant_bugs.py")
      text = text.replace(o, n)
    open(file, "w").write(text)
    env = dict(os.environ, PYTHONPATH=tree)
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.split()],
                       cwd=tree, env=env, capture_output=True, text=True)
    caught = r.returncode != 0
    print(f"{'CAUGHT' if caught else 'MISSED'}  {index + 1}. {what}  ({tests})", flush=True)
    return caught


def main():
  chosen = [int(a) - 1 for a in sys.argv[1:]] or range(len(BUGS))
  missed = [i for i in chosen if not plant(i)]
  sys.exit(1 if missed else 0)


if __name__ == "__main__":
  main()
