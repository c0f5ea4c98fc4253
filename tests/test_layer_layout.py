"""Scanned layers (model.scan_layers) against the unrolled model: the same params give the same logits, losses,
gradients and KV-cache decoding; layouts convert both ways, for arrays, sharded abstract trees and checkpoints."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import checkpoint as ckpt_lib
from lm import layer_layout
from lm import losses
from lm import model as model_lib
from lm.errors import UserError
from lm.setup import Setup
from tests.conftest import cached_decode, tiny_config
from tests.test_model import LLAMA

SCAN = {"model.scan_layers": True}
MODELS = {"gpt2": {"model.n_layers": 3}, "llama-remat": {**LLAMA, "model.n_layers": 3, "model.remat": "full"}}


@functools.lru_cache(maxsize=None)
def setups(name):
  """(unrolled Setup, scanned Setup, unrolled params, scanned params) from one seed."""
  unrolled, scanned = Setup(tiny_config(**MODELS[name])), Setup(tiny_config(**MODELS[name], **SCAN))
  with unrolled.use():
    pu = unrolled.init_params(jax.random.PRNGKey(0))
  with scanned.use():
    ps = scanned.init_params(jax.random.PRNGKey(0))
  return unrolled, scanned, pu, ps


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", MODELS)
def test_scanned_init_is_the_unrolled_init_stacked_and_converts_back(name):
  _, scanned, pu, ps = setups(name)
  assert set(ps) == {"embed", "layers", "ln_final"} | ({"lm_head"} if name == "llama-remat" else {"pos_embed"})
  assert ps["layers"]["attn"]["q"].shape == (3, *pu["layer_0"]["attn"]["q"].shape)
  _equal(layer_layout.to_scanned(pu), ps)
  _equal(layer_layout.to_unrolled(ps), pu)
  _equal(layer_layout.to_unrolled(layer_layout.to_unrolled(ps)), pu)  # converting to its own layout: unchanged
  names = nn.get_partition_spec(scanned.abstract_params(boxed=True))["layers"]["attn"]["q"]
  assert tuple(names) == ("layers", "embed", "heads", "head_dim")


@pytest.mark.parametrize("name", MODELS)
def test_same_logits_losses_and_grads(name):
  unrolled, scanned, pu, ps = setups(name)
  rng = np.random.default_rng(0)
  toks = rng.integers(0, 256, size=(2, 17))
  batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "weights": (rng.random((2, 16)) > 0.2).astype(np.float32),
           "positions": np.broadcast_to(np.arange(16), (2, 16)), "segment_ids": np.ones((2, 16), np.int32)}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  grad = lambda m, p: jax.jit(jax.value_and_grad(lambda q: losses.token_loss_fn(m)(q, batch, None)[0]))(p)
  (lu, gu), (ls, gs) = grad(unrolled.model, pu), grad(scanned.model, ps)
  logits_u = losses.apply_lm(unrolled.model, pu, batch)
  logits_s = losses.apply_lm(scanned.model, ps, batch)
  np.testing.assert_allclose(logits_s, logits_u, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ls, lu, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(layer_layout.to_scanned(gu)), jax.tree.leaves(gs)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_kv_cache_decoding_with_scanned_layers_equals_the_full_forward():
  unrolled, scanned, pu, ps = setups("llama-remat")
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(2, 12)), jnp.int32)
  full, _ = jax.jit(unrolled.model.apply)({"params": pu}, tokens)
  cache = model_lib.init_cache(scanned.model.cfg, 2, 16)
  assert cache["layers"]["k"].shape == (3, 2, 16, 2, 8)  # one stacked cache, a slice per layer
  steps = cached_decode(jax.jit(scanned.model.apply), ps, scanned.model.cfg, tokens, prefill=5, cache_len=16)
  np.testing.assert_allclose(steps, full, atol=2e-5, rtol=1e-4)


def test_abstract_trees_keep_shardings_with_an_unsharded_layer_axis():
  mesh = jax.make_mesh((1,), ("fsdp",))
  spec = jax.sharding.PartitionSpec("fsdp", None)
  x = jax.ShapeDtypeStruct((4, 6), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, spec))
  scanned = layer_layout.to_scanned({"layer_0": {"w": x}, "layer_1": {"w": x}, "head": x})
  assert scanned["layers"]["w"].shape == (2, 4, 6) and tuple(scanned["layers"]["w"].sharding.spec) == (None, *spec)
  back = layer_layout.to_unrolled(scanned)
  assert back["layer_1"]["w"].shape == (4, 6) and back["layer_1"]["w"].sharding.spec == spec
  assert layer_layout.shapes_to_layout({"layers/w": ((2, 4, 6), "float32"), "head": ((4, 6), "float32")}, False) == \
      {"layer_0/w": ((4, 6), "float32"), "layer_1/w": ((4, 6), "float32"), "head": ((4, 6), "float32")}
  with pytest.raises(ValueError, match="layer_0..layer_1"):
    layer_layout.to_scanned({"layer_0": {"w": x}, "layer_2": {"w": x}})


def _save(tmp_path, params, name):
  directory = tmp_path / name
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  ckpt.save(1, {"params": params}, {"step": 1})
  ckpt.close()
  return str(directory)


@pytest.mark.parametrize("saved_scanned,model_scanned", [(False, True), (True, False), (True, True)])
def test_checkpoints_load_into_either_layout(tmp_path, saved_scanned, model_scanned):
  unrolled, scanned, pu, ps = setups("gpt2")
  path = _save(tmp_path, ps if saved_scanned else pu, "ckpt")
  setup = scanned if model_scanned else unrolled
  with setup.use():
    _equal(setup.load_params(path), ps if model_scanned else pu)


def test_layout_conversion_with_fresh_and_dropped_params(tmp_path):
  """A 3-layer scanned checkpoint into a 2-layer unrolled model (its last layer dropped, layer_1 fresh), and
  checks that still name what does not fit."""
  _, _, pu, ps = setups("gpt2")
  path = _save(tmp_path, ps, "ckpt")
  small = Setup(tiny_config(**{**MODELS["gpt2"], "model.n_layers": 2}))
  with small.use():
    got = small.load_params(path, jax.random.PRNGKey(5), fresh="layer_1/*", drop="layer_2/*")
    fresh = small.init_params(jax.random.PRNGKey(5))
  _equal(got["layer_0"], pu["layer_0"])
  _equal(got["layer_1"], fresh["layer_1"])
  _equal(got["embed"], pu["embed"])
  small_scanned = Setup(tiny_config(**{**MODELS["gpt2"], "model.n_layers": 2}, **SCAN))
  with small_scanned.use(), pytest.raises(UserError, match=r"layers/attn/k has shape \(3, 32, 4, 8\) in the "
                                                               r"checkpoint, \(2, 32, 4, 8\) here"):
    small_scanned.load_params(_save(tmp_path, pu, "unrolled"))


def test_sampling_from_scanned_layers_matches_unrolled():
  """The sampler's stacked KV cache (prefilled once per group of rows, then decoded) gives the unrolled
  model's samples."""
  from lm import sampling
  unrolled, scanned, pu, ps = setups("llama-remat")
  prompts = [np.array([1, 2, 3, 4], np.int32)] * 2 + [np.array([7, 8], np.int32)] * 2
  kw = dict(max_new_tokens=6, temperature=1.0, eos_id=260, pad_id=0, group=2)
  a = sampling.generate(unrolled.model, pu, prompts, jax.random.PRNGKey(1), **kw)
  b = sampling.generate(scanned.model, ps, prompts, jax.random.PRNGKey(1), **kw)
  np.testing.assert_array_equal(b["tokens"], a["tokens"])
  np.testing.assert_allclose(b["logprobs"], a["logprobs"], atol=1e-5)
