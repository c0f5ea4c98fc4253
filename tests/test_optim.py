"""The optimizers of lm/optim.py against NumPy: Muon (Newton-Schulz orthogonalisation, momentum, scales) for
the blocks' matrices, AdamW for the rest."""
import jax
import numpy as np

from lm import optim

NS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic Newton-Schulz coefficients


def newton_schulz(g, steps=5, eps=1e-8):
  """Keller Jordan's zeropower_via_newtonschulz5, in NumPy (float64)."""
  x = g / (np.linalg.norm(g) + eps)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  a, b, c = NS
  for _ in range(steps):
    s = x @ x.T
    x = a * x + (b * s + c * s @ s) @ x
  return x.T if tall else x


def test_newton_schulz_orthogonalises():
  """Its output has the input's singular vectors and singular values near 1 (Keller's coefficients trade exact
  convergence for speed: they land in roughly [0.7, 1.2]) where the input's were spread over 5x."""
  g = np.random.default_rng(0).normal(size=(12, 20))
  u, s, vt = np.linalg.svd(g, full_matrices=False)
  assert s.max() / s.min() > 5
  o = newton_schulz(g)
  assert 0.6 < np.linalg.svd(o, compute_uv=False).min() and np.linalg.svd(o, compute_uv=False).max() < 1.25
  inner = u.T @ o @ vt.T  # diagonal when o shares g's singular vectors
  np.testing.assert_allclose(inner - np.diag(np.diag(inner)), 0.0, atol=1e-6)


def _train_config(**kw):
  t = dict(optimizer="muon", lr=0.01, min_lr=0.0, warmup_steps=0, schedule="constant", b1=0.9, b2=0.99,
           weight_decay=0.1, grad_clip=0.0, muon_lr=0.05, muon_momentum=0.9, muon_ns_steps=5, muon_weight_decay=0.2,
           steps=10, decay_steps=0)
  t.update(kw)
  return type("T", (), t)


def _params(rng):
  """Shapes of a block as lm/model.py makes them: q (d, heads, head_dim), o (heads, head_dim, d), MLP (in, out)."""
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  return {"embed": {"embedding": f(11, 8)}, "lm_head": {"kernel": f(8, 11)},
          "layer_0": {"attn": {"q": f(8, 2, 3), "o": f(2, 3, 8)}, "ln_attn": {"scale": f(8)},
                      "mlp": {"up": {"kernel": f(8, 16)}, "down": {"kernel": f(16, 8)}}}}


def test_muon_labels_and_matrices():
  params = _params(np.random.default_rng(0))
  labels = optim.muon_labels(params)
  assert labels["layer_0"]["attn"] == {"q": "muon", "o": "muon"}
  assert labels["layer_0"]["mlp"] == {"up": {"kernel": "muon"}, "down": {"kernel": "muon"}}
  assert labels["layer_0"]["ln_attn"]["scale"] == labels["embed"]["embedding"] == labels["lm_head"]["kernel"] \
      == "adamw"


def test_muon_update_matches_numpy():
  """Three steps of train.optimizer=muon against a NumPy Muon (Nesterov momentum as optax writes it, Newton-Schulz
  on the 2-D matrix the forward pass multiplies by, sqrt(max(1, fan_out / fan_in)), decoupled decay) and NumPy
  AdamW (decay on matrices only) for the embeddings, head and norm."""
  rng = np.random.default_rng(0)
  t = _train_config()
  params = _params(rng)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(3)]
  optimizer, _ = optim.make_optimizer(t)
  state, p = optimizer.init(params), params
  for g in grads:
    u, state = jax.jit(optimizer.update)(g, state, p)
    p = jax.tree.map(lambda a, b: a + b, p, u)

  two_d = {"q": lambda x: x.reshape(8, 6), "o": lambda x: x.reshape(6, 8)}
  beta = t.muon_momentum
  expected = {}
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    key = jax.tree_util.keystr(path)
    name = key.split("'")[-2] if "layer_0" in key and x.ndim >= 2 else None
    x = x.astype(np.float64)
    m = v = np.zeros_like(x)
    for k, g in enumerate([np.asarray(dict(jax.tree_util.tree_leaves_with_path(gr))[path], np.float64)
                           for gr in grads], start=1):
      if name is not None:  # Muon
        m = beta * m + (1 - beta) * g
        nesterov = beta * m / (1 - beta ** (k + 1)) + (1 - beta) * g / (1 - beta ** k)
        mat = two_d.get(name, lambda a: a)(nesterov)
        o = newton_schulz(mat) * np.sqrt(max(1.0, mat.shape[1] / mat.shape[0]))
        x = x - t.muon_lr * (o.reshape(x.shape) + t.muon_weight_decay * x)
      else:  # AdamW
        m = t.b1 * m + (1 - t.b1) * g
        v = t.b2 * v + (1 - t.b2) * g * g
        step = (m / (1 - t.b1 ** k)) / (np.sqrt(v / (1 - t.b2 ** k)) + 1e-8)
        x = x - t.lr * (step + (t.weight_decay * x if x.ndim >= 2 else 0.0))
    expected[key] = x
  for path, x in jax.tree_util.tree_leaves_with_path(p):
    np.testing.assert_allclose(np.asarray(x), expected[jax.tree_util.keystr(path)], atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))


def test_muon_run_resumes_exactly(tmp_path, shakespeare):
  """Muon's state (momentum for the block matrices, AdamW moments for the rest: two masked trees) is sharded,
  checkpointed and restored: 2 steps + resume to 4 logs the train losses and final eval of 4 straight steps (the
  2-step run also evaluates at its end)."""
  from lm import metrics
  from lm import train
  from tests.conftest import tiny_config
  run = lambda workdir, steps: train.run(tiny_config(**{
      "train.optimizer": "muon", "train.steps": steps, "train.decay_steps": 4, "train.log_every": 1,
      "checkpoint.every": 2, "eval.every": 4, "model.qk_norm": True, "model.mlp": "relu2"}), str(workdir),
      allow_config_change=True)
  run(tmp_path / "straight", 4)
  run(tmp_path / "resumed", 2)
  run(tmp_path / "resumed", 4)
  events = lambda d: [{k: v for k, v in e.items() if k != "tokens_per_s"} for e in metrics.read(d)
                      if e["split"] == "train" or e["step"] == 4]
  straight = events(tmp_path / "straight")
  assert straight == events(tmp_path / "resumed")
  assert straight[-1]["loss"] < straight[0]["loss"]


def test_scanned_layers_optimised_as_unrolled():
  """model.scan_layers stacks each layer's params on a leading axis: Muon must still orthogonalise each layer's
  matrix (not the stack), and neither optimizer may decay a stacked norm scale (a vector per layer). Three steps on
  the scanned tree equal three on the unrolled one, for Muon (with both decays) and AdamW."""
  from lm import layer_layout
  rng = np.random.default_rng(1)
  one, two = _params(rng), _params(rng)
  params = {**one, "layer_1": two["layer_0"]}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(3)]
  scanned = layer_layout.to_scanned(params)
  assert optim.muon_labels(scanned)["layers"]["ln_attn"]["scale"] == "adamw"
  assert optim.muon_labels(scanned)["layers"]["attn"]["o"] == "muon"
  for kind in ("muon", "adamw"):
    optimizer, _ = optim.make_optimizer(_train_config(optimizer=kind))
    ends = []
    for p, gs in ((params, grads), (scanned, [layer_layout.to_scanned(g) for g in grads])):
      state = optimizer.init(p)
      for g in gs:
        u, state = jax.jit(optimizer.update)(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, u)
      ends.append(p)
    for path, x in jax.tree_util.tree_leaves_with_path(layer_layout.to_scanned(ends[0])):
      np.testing.assert_allclose(np.asarray(dict(jax.tree_util.tree_leaves_with_path(ends[1]))[path]), np.asarray(x),
                                 atol=1e-5, err_msg=f"{kind} {jax.tree_util.keystr(path)}")
