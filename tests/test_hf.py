"""Hugging Face checkpoints against `transformers` itself (CPU torch, test-only): tiny random models of each family
saved with save_pretrained, loaded by our code; logits, greedy generations, KV-cache decoding, export round trips,
and one-line errors for checkpoints that do not fit."""
import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lm import layer_layout  # noqa: E402
from lm import model as model_lib  # noqa: E402
from lm import sampling  # noqa: E402
from lm.errors import UserError  # noqa: E402
from lm.hf import convert  # noqa: E402
from lm.hf import export  # noqa: E402
from lm.setup import Setup  # noqa: E402
from tests.conftest import apply_overrides, cached_decode, tiny_config  # noqa: E402

VOCAB = 264  # the byte tokenizer's padded vocabulary, so Setup's default tokenizer fits
COMMON = dict(vocab_size=VOCAB, initializer_range=0.2)  # larger weights than 0.02: no near-ties for greedy decoding
LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, **COMMON)
FAMILIES = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                                            eos_token_id=2, **COMMON),
    # rope_scaling llama3 with a short original context, so the 4 frequencies of head_dim 8 fall in every band
    "llama3": lambda: transformers.LlamaConfig(**LLAMA, rope_theta=500000.0, tie_word_embeddings=False,
                                                rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                              "original_max_position_embeddings": 16}),
    "mistral": lambda: transformers.MistralConfig(**LLAMA, sliding_window=8, tie_word_embeddings=False),
    "qwen2": lambda: transformers.Qwen2Config(**LLAMA, tie_word_embeddings=True),
}
SHARD = {"gpt2": "40KB"}  # saved as several files with model.safetensors.index.json


def config_from(directory, **overrides):
  """The tiny test config with a Hugging Face init_from: its model.* left at the defaults, for config.json."""
  c = tiny_config()
  c.model = model_lib.ModelConfig.config()
  c.checkpoint.init_from = str(directory)
  return apply_overrides(c, overrides)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  """{family: (directory, torch model)}: each tiny random model saved with save_pretrained."""
  out = {}
  for i, (name, make) in enumerate(FAMILIES.items()):
    torch.manual_seed(i)
    m = transformers.AutoModelForCausalLM.from_config(make(), attn_implementation="eager").eval()
    d = str(tmp_path_factory.mktemp(name))
    m.save_pretrained(d, max_shard_size=SHARD.get(name, "1GB"))
    out[name] = (d, m)
  return out


@pytest.fixture(scope="module")
def ours(hf_models):
  """{family: (setup, params)}: each model imported through checkpoint.init_from."""
  out = {}
  for name, (d, _) in hf_models.items():
    setup = Setup(config_from(d))
    with setup.use():
      out[name] = setup, setup.init_from(d, jax.random.PRNGKey(0))
  return out


def torch_logits(m, tokens):
  with torch.no_grad():
    return m(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def our_logits(setup, params, tokens):
  return np.asarray(jax.jit(setup.model.apply)({"params": params}, jnp.asarray(tokens))[0])


TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(4, 24)).astype(np.int32)


def test_index_was_sharded(hf_models):
  assert os.path.exists(os.path.join(hf_models["gpt2"][0], "model.safetensors.index.json"))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family, hf_models, ours):
  setup, params = ours[family]
  diff = np.abs(our_logits(setup, params, TOKENS) - torch_logits(hf_models[family][1], TOKENS)).max()
  assert diff <= 1e-4, diff


def test_architecture_comes_from_config_json(ours):
  cfg = {name: setup.base_model.cfg for name, (setup, _) in ours.items()}
  assert (cfg["gpt2"].position, cfg["gpt2"].use_bias, cfg["gpt2"].max_len) == ("learned", True, 64)
  assert (cfg["llama3"].rope_scaling, cfg["llama3"].rope_original_max_len, cfg["llama3"].rope_theta) == \
      ("llama3", 16, 500000.0)
  assert cfg["mistral"].sliding_window == 8 and cfg["mistral"].n_kv_heads == 2
  assert cfg["qwen2"].qkv_bias and not cfg["qwen2"].use_bias and cfg["qwen2"].tie_embeddings


def test_window_and_scaling_matter(hf_models, ours):
  """The parity above would not hold without the sliding window or the llama3 frequencies: both are exercised."""
  for family, change in (("mistral", {"sliding_window": 0}), ("llama3", {"rope_scaling": "none"})):
    setup, params = ours[family]
    model = model_lib.Transformer(dataclasses.replace(setup.base_model.cfg, **change))
    logits = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(TOKENS))[0])
    assert np.abs(logits - torch_logits(hf_models[family][1], TOKENS)).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_transformers(family, hf_models, ours):
  setup, params = ours[family]
  prompts = TOKENS[:, :8]
  out = sampling.generate(setup.model, params, list(prompts), jax.random.PRNGKey(0), 32, temperature=0.0)
  with torch.no_grad():
    theirs = hf_models[family][1].generate(torch.tensor(prompts, dtype=torch.long), max_new_tokens=32,
                                           do_sample=False, eos_token_id=None, pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), theirs.numpy()[:, 8:])


@pytest.mark.parametrize("family", ["llama3", "qwen2"])  # greedy generation above decodes every family with it
def test_kv_cache_decoding_equals_full_forward(family, ours):
  setup, params = ours[family]
  apply = jax.jit(setup.model.apply)
  tokens = jnp.asarray(TOKENS[:2, :16])
  full = apply({"params": params}, tokens)[0]
  steps = cached_decode(apply, params, setup.model.cfg, tokens, prefill=6, cache_len=16)
  np.testing.assert_allclose(steps, full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_import_export_transformers(family, hf_models, ours, tmp_path):
  """import -> export -> transformers loads it -> the same weights, bit for bit, and so the same logits."""
  setup, params = ours[family]
  cfg = setup.base_model.cfg
  kind = convert.model_type(cfg)
  out = str(tmp_path / "export")
  export.write(out, export.hf_tensors(jax.device_get(params), cfg, kind), convert.hf_config(cfg, kind),
               max_shard_bytes=30_000)
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
  original = hf_models[family][1]
  assert type(back) is type(original)
  want, got = original.state_dict(), back.state_dict()
  assert set(want) == set(got)
  for k in want:
    np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=k)
  np.testing.assert_array_equal(torch_logits(back.eval(), TOKENS), torch_logits(original, TOKENS))


def test_export_of_scanned_layers(ours):
  """A model.scan_layers run exports the same tensors as its unrolled twin (checked against transformers above)."""
  setup, params = ours["qwen2"]
  cfg, params = setup.base_model.cfg, jax.device_get(params)
  want = export.hf_tensors(params, cfg, "qwen2")
  got = export.hf_tensors(layer_layout.to_scanned(params), dataclasses.replace(cfg, scan_layers=True), "qwen2")
  assert list(got) == list(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ---- Bad input: one line each ----


def one_line(excinfo, *needles):
  message = str(excinfo.value)
  assert "\n" not in message, message
  for n in needles:
    assert n in message, message
  return message


def init(directory, **overrides):
  setup = Setup(config_from(directory, **overrides))
  with setup.use():
    return setup.init_from(str(directory), jax.random.PRNGKey(0))


def copy_model(hf_models, family, tmp_path):
  d = tmp_path / family
  shutil.copytree(hf_models[family][0], d)
  return d


def test_not_a_checkpoint_directory(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(UserError) as e:
    init(tmp_path)
  one_line(e, str(tmp_path), "Hugging Face")


def test_unsupported_architecture(hf_models, tmp_path):
  d = copy_model(hf_models, "qwen2", tmp_path)
  config = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
  with pytest.raises(UserError) as e:
    init(d)
  one_line(e, "model_type 'bert' is not supported")


def test_missing_tensor(hf_models, tmp_path):
  from safetensors.numpy import load_file, save_file
  d = copy_model(hf_models, "llama3", tmp_path)
  tensors = load_file(str(d / "model.safetensors"))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(UserError) as e:
    init(d)
  one_line(e, "tensor model.layers.1.mlp.up_proj.weight is missing")


def test_mismatched_tensor(hf_models, tmp_path):
  d = copy_model(hf_models, "mistral", tmp_path)
  config = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
  with pytest.raises(UserError) as e:
    init(d)
  one_line(e, "model.layers.0.mlp.gate_proj.weight has shape (64, 32), config.json implies (48, 32)")


def test_no_safetensors(hf_models, tmp_path):
  d = tmp_path / "bin"
  d.mkdir()
  shutil.copy(os.path.join(hf_models["gpt2"][0], "config.json"), d)
  (d / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(UserError) as e:
    init(d)
  one_line(e, "holds no *.safetensors", "pytorch_model.bin")


def test_tokenizer_vocabulary_too_big_for_the_model(hf_models, tmp_path):
  d = copy_model(hf_models, "gpt2", tmp_path)
  config = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**config, "vocab_size": 200}))
  with pytest.raises(UserError) as e:
    Setup(config_from(d))
  one_line(e, "tokenizer 'byte' has 262 tokens but model.vocab_size=200")


def test_import_into_scanned_layers(hf_models):
  with pytest.raises(UserError) as e:
    Setup(config_from(hf_models["gpt2"][0], **{"model.scan_layers": True}))
  one_line(e, "Hugging Face checkpoints use unrolled layers", "--config.model.scan_layers=False")


def test_overrides_that_contradict_the_checkpoint(hf_models):
  with pytest.raises(UserError) as e:
    Setup(config_from(hf_models["llama3"][0], **{"model.n_layers": 3}))
  one_line(e, "model.n_layers=3 (checkpoint: 2)")


def test_export_refuses_a_model_without_hf_equivalent(tmp_path):
  setup = Setup(tiny_config(**{"model.position": "rope"}))  # rope with layernorm and gelu: neither family
  with pytest.raises(UserError) as e:
    convert.model_type(setup.base_model.cfg)
  one_line(e, "no Hugging Face equivalent", "position=rope, norm=layernorm")


def test_a_hugging_face_directory_opens_like_a_run(hf_models, ours):
  """sample, eval and compression open HF directories through lm.runs.load as they open run directories."""
  from lm import runs
  setup, params = runs.load(hf_models["qwen2"][0])
  np.testing.assert_array_equal(our_logits(setup, params, TOKENS), our_logits(*ours["qwen2"], TOKENS))


def test_export_cli_errors_are_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    export.main(["--checkpoint", str(tmp_path / "nothing"), str(tmp_path / "out")])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "nothing" in err[0]
  assert not (tmp_path / "out").exists()


def test_byte_tokenizer_with_a_model_that_has_its_own(hf_models, tmp_path):
  d = copy_model(hf_models, "llama3", tmp_path)
  config = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**config, "vocab_size": 512}))
  (d / "tokenizer.json").write_text("{}")
  with pytest.raises(UserError) as e:
    Setup(config_from(d))
  one_line(e, f"set --config.tokenizer=hf:{d}")


SHARDED_LOAD = """
import json, sys
import jax, numpy as np
from lm import checkpoint as ckpt_lib
from lm.setup import Setup
from lm import model as model_lib
from tests.conftest import tiny_config
c = tiny_config(**{"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2, "checkpoint.init_from": sys.argv[1]})
c.model = model_lib.ModelConfig.config()
TOKENS = np.asarray(json.loads(sys.argv[2]), np.int32)
setup = Setup(c)
with setup.use():
  params = setup.init_from(sys.argv[1], jax.random.PRNGKey(0))
  logits = jax.jit(setup.model.apply)({"params": params}, TOKENS)[0]
want = setup.param_shardings()
shards = {ckpt_lib.path_of(p): [list(s.data.shape) for s in x.addressable_shards]
          for p, x in jax.tree_util.tree_leaves_with_path(params)}
ok = all(x.sharding == w for x, w in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
print("RESULT " + json.dumps({"ok": ok, "shards": shards, "logits": np.asarray(logits).tolist()}))
"""


def test_loads_straight_into_a_sharded_mesh(hf_models, ours):
  """On 8 simulated devices (fsdp=4 x tensor=2) every tensor lands in its rule's sharding, each device holding
  only its slice, and the model computes the same logits."""
  import subprocess
  import sys
  from tests.conftest import ROOT
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": str(ROOT)}
  out = subprocess.run([sys.executable, "-c", SHARDED_LOAD, hf_models["llama3"][0], json.dumps(TOKENS.tolist())],
                       env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
  assert result["ok"]
  assert result["shards"]["layer_0/attn/q"] == [[8, 2, 8]] * 8  # embed 32 / fsdp 4, heads 4 / tensor 2
  assert result["shards"]["embed/embedding"] == [[132, 8]] * 8  # vocab 264 / tensor 2, embed / fsdp
  np.testing.assert_allclose(np.asarray(result["logits"]), our_logits(*ours["llama3"], TOKENS), atol=1e-5)
