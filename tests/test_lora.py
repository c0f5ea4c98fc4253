"""LoRA adapters (lm/lora.py): zero adapters are the base exactly, training moves only the adapters (and keeps
optimizer moments only for them), the merged export computes the adapted model, and the frozen reference of
policy gradient is the base itself. With lora.train_embeddings the same holds for adapters + the embedding (an
untied head, a learned position table) tables, and the reference keeps the original tables."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import checkpoint as ckpt_lib
from lm import dry_run
from lm import lora
from lm import runs
from lm import train
from lm.errors import UserError
from lm.setup import Setup
from tests.conftest import tiny_config

LLAMA = {"model.norm": "rmsnorm", "model.mlp": "swiglu", "model.position": "rope", "model.n_kv_heads": 2,
         "model.tie_embeddings": False, "lora.rank": 4, "lora.targets": "all"}
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 16)), jnp.int32)


def logits(model, params):
  return np.asarray(jax.jit(model.apply)({"params": params}, TOKENS)[0])


def flat(tree) -> dict:
  return {ckpt_lib.path_of(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_zero_adapters_are_the_base_exactly():
  setup = Setup(tiny_config(**LLAMA))
  with setup.use():
    params = setup.init_params(jax.random.PRNGKey(0))
  adapters = flat(params["lora"])
  assert len(adapters) == 2 * 2 * 7  # 2 layers x (q, k, v, o, gate, up, down) x (A, B)
  assert all(not x.any() for k, x in adapters.items() if k.endswith("/b"))
  assert all(x.std() > 0 for k, x in adapters.items() if k.endswith("/a"))
  adapted = logits(setup.model, params)
  base = logits(setup.base_model, params["base"])
  np.testing.assert_array_equal(np.asarray(adapted), np.asarray(base))


def test_nonzero_adapters_merge_as_w_plus_scaled_ab():
  setup = Setup(tiny_config(**{**LLAMA, "lora.alpha": 8.0, "lora.targets": "q,down"}))
  with setup.use():
    params = setup.init_params(jax.random.PRNGKey(0))
  b = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(1), x.shape), params["lora"])
  params = {**params, "lora": jax.tree.map(lambda ab, r: {"a": ab["a"], "b": r["b"]}, params["lora"], b,
                                           is_leaf=lambda x: isinstance(x, dict) and "a" in x)}
  merged = flat(jax.jit(lambda p: lora.model_params(p, 2.0))(params))
  base, ad = flat(params["base"]), params["lora"]["layer_1"]
  q = base["layer_1/attn/q"] + 2.0 * np.einsum("dr,rhk->dhk", np.asarray(ad["q"]["a"]), np.asarray(ad["q"]["b"]))
  np.testing.assert_allclose(merged["layer_1/attn/q"], q, rtol=1e-5, atol=1e-6)
  down = base["layer_1/mlp/down/kernel"] + 2.0 * np.asarray(ad["down"]["a"]) @ np.asarray(ad["down"]["b"])
  np.testing.assert_allclose(merged["layer_1/mlp/down/kernel"], down, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(merged["layer_1/attn/k"], base["layer_1/attn/k"])  # not a target


def short_run(tmp_path_factory, name: str, **overrides) -> tuple:
  """A 3-step LoRA pretraining run (Llama layout, adapters on every matrix): (run dir, config)."""
  d = str(tmp_path_factory.mktemp(name) / "run")
  config = tiny_config(**LLAMA, **{"train.steps": 3, "checkpoint.every": 3, "eval.every": 3, "train.lr": 1e-2,
                                   "train.warmup_steps": 0, **overrides})
  train.run(config, d)
  return d, config


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, shakespeare):
  return short_run(tmp_path_factory, "lora")


def trained_and_initial(run_dir, config) -> tuple:
  """A run's last params and the ones it started from."""
  start = Setup(config)
  with start.use():
    initial = start.init_params(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  return runs.load(run_dir)[1], initial


def test_training_changes_only_adapters(lora_run):
  params, initial = trained_and_initial(*lora_run)
  for k, x in flat(params["base"]).items():
    np.testing.assert_array_equal(x, flat(initial["base"])[k], err_msg=k)
  moved = {k: np.abs(x - flat(initial["lora"])[k]).max() for k, x in flat(params["lora"]).items()}
  assert all(v > 0 for v in moved.values()), moved


@pytest.fixture(scope="module")
def tables_run(tmp_path_factory, shakespeare):
  """With lora.train_embeddings: the embedding and the untied lm_head train beside the adapters (no weight decay,
  so only a gradient can move a param)."""
  return short_run(tmp_path_factory, "lora_tables", **{"lora.train_embeddings": True, "train.weight_decay": 0.0})


def test_train_embeddings_trains_adapters_and_tables_base_stays(tables_run):
  params, initial = trained_and_initial(*tables_run)
  assert set(lora.split(initial)[0]) == {"lora", "tables"}
  first, base0 = flat(initial["tables"]), flat(initial["base"])
  assert sorted(first) == ["embed/embedding", "lm_head/kernel"]
  for k, x in first.items():  # trainable copies start as the base's tables
    np.testing.assert_array_equal(x, base0[k], err_msg=k)
  for k, x in flat(params["base"]).items():  # the base, original tables included, never moves
    np.testing.assert_array_equal(x, base0[k], err_msg=k)
  moved = {k: np.abs(x - flat(initial[part])[k]).max() for part in ("lora", "tables")
           for k, x in flat(params[part]).items()}
  assert all(v > 0 for v in moved.values()), moved


@pytest.mark.parametrize("run, trained", [("lora_run", ("params/lora/",)),
                                          ("tables_run", ("params/lora/", "params/tables/"))])
def test_optimizer_state_covers_only_trainable_params(run, trained, request):
  d, _ = request.getfixturevalue(run)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(d), read_only=True, async_save=False)
  saved = ckpt.saved_shapes(ckpt.steps()[-1])
  ckpt.manager.close()
  moments = {k: v for k, v in saved.items() if k.startswith("opt_state") and v[0]}
  trainable_shapes = sorted(v[0] for k, v in saved.items() if k.startswith(trained))
  assert moments and sorted(v[0] for v in moments.values()) == sorted(trainable_shapes * 2)  # AdamW's mu and nu


def test_dry_run_shows_adapter_only_optimizer_memory():
  plan = dry_run.plan(tiny_config(**LLAMA))
  n = plan["trainable_params"]
  # per layer: q, o: A + B = 32*4 + 4*32; k, v (2 kv heads): 32*4 + 4*16; gate, up, down: 32*4 + 4*128
  assert n == 2 * (2 * (32 * 4 + 4 * 32) + 2 * (32 * 4 + 4 * 16) + 3 * (32 * 4 + 4 * 128))
  base = Setup(tiny_config(**{**LLAMA, "lora.rank": 0})).abstract_params()
  assert plan["params"] == sum(x.size for x in jax.tree.leaves(base)) + n
  assert 0 <= plan["opt_state_bytes_per_device"] - 2 * 4 * n < 64  # AdamW's two float32 moments (+ counts)


def test_dry_run_with_train_embeddings_counts_the_tied_table_once():
  config = tiny_config(**{"lora.rank": 4, "lora.train_embeddings": True})  # GPT-2 layout: tied, learned positions
  plan = dry_run.plan(config)
  base = Setup(tiny_config()).abstract_params()
  table = base["embed"]["embedding"].size + base["pos_embed"].size
  assert "lm_head" not in base
  adapters = 2 * 4 * (32 * 4 + 4 * 32)  # 2 layers x q, k, v, o x (A + B)
  assert plan["trainable_params"] == adapters + table
  assert plan["params"] == sum(x.size for x in jax.tree.leaves(base)) + adapters + table
  assert 0 <= plan["opt_state_bytes_per_device"] - 2 * 4 * (adapters + table) < 64


def test_train_embeddings_trains_a_learned_position_table():
  """GPT-2 layout (tied embedding, learned positions): the position table trains from a copy beside the
  embedding, the merge and the export's tensors use the trained copy, the reference keeps the original."""
  from lm.hf import convert
  from lm.hf import export
  setup = Setup(tiny_config(**{"lora.rank": 4, "lora.train_embeddings": True}))
  with setup.use():
    params = setup.init_params(jax.random.PRNGKey(0))
  assert sorted(flat(params["tables"])) == ["embed/embedding", "pos_embed"]
  np.testing.assert_array_equal(params["tables"]["pos_embed"], params["base"]["pos_embed"])
  trainable, frozen = lora.split(params)

  def nll(t):
    logp = jax.nn.log_softmax(setup.model.apply({"params": lora.join(t, frozen)}, TOKENS)[0][:, :-1])
    return -jnp.take_along_axis(logp, TOKENS[:, 1:, None], axis=-1).mean()

  assert np.abs(np.asarray(jax.grad(nll)(trainable)["tables"]["pos_embed"])).max() > 0
  trained = params["tables"]["pos_embed"] + 0.5 * jax.random.normal(jax.random.PRNGKey(1), (32, 32))
  params = {**params, "tables": {**params["tables"], "pos_embed": trained}}
  merged = lora.model_params(params, setup.lora.scale)
  np.testing.assert_array_equal(merged["pos_embed"], trained)
  np.testing.assert_array_equal(logits(setup.model, params), logits(setup.base_model, merged))
  reference = lora.without_adapters(params)
  assert lora.TABLES not in reference and reference["base"]["pos_embed"] is frozen["pos_embed"]
  assert np.abs(logits(setup.model, params) - logits(setup.model, reference)).max() > 1e-3
  cfg = setup.base_model.cfg
  tensors = export.hf_tensors(jax.device_get(merged), cfg, convert.model_type(cfg))
  np.testing.assert_array_equal(tensors["transformer.wpe.weight"], np.asarray(trained))


@pytest.mark.parametrize("run", ["lora_run", "tables_run"])
def test_merged_export_equals_the_adapted_model(run, tmp_path, request):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from lm.hf import export
  d, _ = request.getfixturevalue(run)
  export.main(["--checkpoint", d, str(tmp_path / "hf")])
  setup, params = runs.load(d)
  ours = logits(setup.model, params)
  m = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
  assert type(m).__name__ == "LlamaForCausalLM"
  with torch.no_grad():
    theirs = m(torch.tensor(np.asarray(TOKENS), dtype=torch.long)).logits.numpy()
  base = logits(setup.base_model, params["base"])
  assert np.abs(ours - base).max() > 1e-3  # the adapters (and tables) changed the model...
  assert np.abs(ours - theirs).max() <= 1e-4  # ...and the export is the adapted model
  if "tables" in params:  # the export wrote the trained tables, not the base's
    without = logits(setup.model, {k: v for k, v in params.items() if k != "tables"})
    assert np.abs(ours - without).max() > 1e-3
    np.testing.assert_array_equal(m.model.embed_tokens.weight.detach().numpy(),
                                  np.asarray(params["tables"]["embed"]["embedding"]))


@pytest.mark.parametrize("run", ["lora_run", "tables_run"])
def test_init_from_a_lora_run_starts_from_its_merged_weights(run, request):
  d, config = request.getfixturevalue(run)
  setup, params = runs.load(d)
  merged = flat(lora.model_params(params, setup.lora.scale))
  nxt = Setup(tiny_config(**LLAMA, **{"checkpoint.init_from": d, "lora.train_embeddings": True}))
  with nxt.use():
    start = nxt.init_from(d, jax.random.PRNGKey(5))
  for k, x in flat(start["base"]).items():
    np.testing.assert_allclose(x, merged[k], rtol=1e-6, err_msg=k)
  if "tables" in params:
    np.testing.assert_array_equal(merged["embed/embedding"], np.asarray(params["tables"]["embed"]["embedding"]))
  for k, x in flat(start["tables"]).items():  # fresh trainable copies of the loaded (merged) tables
    np.testing.assert_array_equal(x, merged[k], err_msg=k)
  assert start["tables"]["embed"]["embedding"] is not start["base"]["embed"]["embedding"]
  assert all(not x.any() for k, x in flat(start["lora"]).items() if k.endswith("/b"))  # fresh adapters


def test_bad_targets_are_one_line():
  with pytest.raises(UserError) as e:
    Setup(tiny_config(**{"lora.rank": 4, "lora.targets": "q,ffn"}))
  assert "lora.targets='q,ffn'" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(UserError) as e:
    Setup(tiny_config(**{"lora.rank": 4, "lora.targets": "gate"}))  # a gelu MLP has no gate
  assert "no gate" in str(e.value)
  with pytest.raises(UserError) as e:
    Setup(tiny_config(**{"lora.rank": 4, "model.scan_layers": True}))
  assert "LoRA adapters" in str(e.value) and "--config.model.scan_layers=False" in str(e.value)


def test_policy_gradient_rollout_scores_the_reference_with_the_base():
  """With adapters and trained embedding tables that move the policy, the rollout's reference log-probs are the
  base model's (teacher-forced, with the original tables), computed from the very base buffers the adapters sit
  on."""
  from lm.objectives import policy_gradient as pg
  from lm.rl import common
  from tests.rl.pg_helpers import pg_config
  c = pg_config()
  c.lora.update(rank=4, targets="attention", train_embeddings=True)
  setup = Setup(c)
  with setup.use():
    obj = pg.build(setup)
    params = train.initial_params(setup, obj)
    assert obj.batches.reference is None  # no copy kept: the reference is the policy's own base buffers
    assert obj.batches.reference_params(params)[lora.FROZEN] is params[lora.FROZEN]
    assert lora.TABLES not in obj.batches.reference_params(params)
    move = lambda tree: jax.tree.map(lambda x: x + 0.5 * jax.random.normal(jax.random.PRNGKey(2), x.shape), tree)
    params = {**params, "lora": move(params["lora"]), lora.TABLES: move(params[lora.TABLES])}
    rows = obj.batches(0, params).rows
    n = c.objective.max_new_tokens
    base = common.token_logprobs(setup.base_model, params["base"], rows.tokens, rows.positions, rows.segment_ids,
                                 n=n, temperature=float(c.objective.temperature))
    policy = common.token_logprobs(setup.model, params, rows.tokens, rows.positions, rows.segment_ids, n=n,
                                   temperature=float(c.objective.temperature))
  mask = rows.mask > 0
  np.testing.assert_allclose(rows.ref_logprobs[mask], np.asarray(base)[mask], atol=1e-5)
  assert np.abs(np.asarray(policy)[mask] - rows.ref_logprobs[mask]).max() > 1e-2
