"""Hugging Face <-> lm: the architecture (config.json <-> model.* options) and every tensor's name and layout,
both ways, for the GPT-2 and Llama families (Llama 2/3, Mistral, Qwen2/2.5).

Our kernels are (in, out) with heads kept apart: q/k/v (embed, heads, head_dim), o (heads, head_dim, embed),
MLP (in, out). GPT-2's Conv1D weights are already (in, out), with q, k, v fused in `c_attn`; Llama-family
Linear weights are (out, in). Both families use rotate-half RoPE where they use RoPE, as `lm.model.rope` does,
so q and k need no permutation.
"""
import dataclasses
from typing import Callable

import numpy as np

from lm.errors import UserError

MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
LLAMA_FAMILY = ("llama", "mistral", "qwen2")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}
# model.* options read from config.json; the rest (dtype, param_dtype, remat, attention_impl, dropout) stay the
# run's own. max_len is the position table's size for GPT-2; for RoPE models a run may set a shorter one.
ARCH_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len", "norm", "mlp",
             "position", "rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
             "rope_original_max_len", "use_bias", "qkv_bias", "tie_embeddings", "sliding_window", "norm_eps")
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # what flax's nn.gelu computes (approximate=True)


def model_options(hf: dict, where: str) -> dict:
  """config.json (a dict) -> {model option: value}; one UserError for anything we cannot represent exactly."""
  kind = hf.get("model_type")
  if kind not in MODEL_TYPES:
    raise UserError(f"{where}: model_type {kind!r} is not supported; supported: {', '.join(MODEL_TYPES)}")

  def unsupported(what):
    raise UserError(f"{where}: {what} is not supported (model_type {kind!r})")

  if kind == "gpt2":
    if hf.get("activation_function", "gelu_new") not in TANH_GELU:
      unsupported(f"activation_function={hf.get('activation_function')!r} (supported: {', '.join(TANH_GELU)})")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
      unsupported("attention scaling other than 1/sqrt(head_dim)")
    d = hf["n_embd"]
    return dict(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=hf["n_head"],
                n_kv_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d, max_len=hf["n_positions"],
                norm="layernorm", mlp="gelu", position="learned", use_bias=True, qkv_bias=False,
                tie_embeddings=hf.get("tie_word_embeddings", True), sliding_window=0,
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), **_rope({}, where))
  if hf.get("hidden_act", "silu") != "silu":
    unsupported(f"hidden_act={hf.get('hidden_act')!r}")
  d, heads = hf["hidden_size"], hf["num_attention_heads"]
  if hf.get("head_dim") not in (None, d // heads):
    unsupported(f"head_dim={hf['head_dim']} != hidden_size / num_attention_heads = {d // heads}")
  if hf.get("mlp_bias") or (kind != "qwen2" and hf.get("attention_bias")):
    unsupported("attention_bias / mlp_bias")
  window = 0
  if kind == "mistral":
    window = hf.get("sliding_window") or 0
  elif kind == "qwen2" and hf.get("use_sliding_window"):
    unsupported("use_sliding_window=true (per-layer windows)")
  return dict(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"], n_heads=heads,
              n_kv_heads=hf.get("num_key_value_heads") or heads, d_ff=hf["intermediate_size"],
              max_len=hf["max_position_embeddings"], norm="rmsnorm", mlp="swiglu", position="rope", use_bias=False,
              qkv_bias=kind == "qwen2", tie_embeddings=hf.get("tie_word_embeddings", False), sliding_window=window,
              norm_eps=float(hf.get("rms_norm_eps", 1e-6)), **_rope(hf, where))


def _rope(hf: dict, where: str) -> dict:
  """RoPE options from either spelling: transformers 4's rope_theta + rope_scaling, or 5's rope_parameters."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  theta = hf.get("rope_theta") or params.get("rope_theta") or 10000.0
  spec = scaling or params
  kind = spec.get("rope_type") or spec.get("type") or "default"
  out = dict(rope_theta=float(theta), rope_scaling="none", rope_factor=1.0, rope_low_freq_factor=1.0,
             rope_high_freq_factor=4.0, rope_original_max_len=8192)
  if kind == "default":
    return out
  if kind == "linear":
    return {**out, "rope_scaling": "linear", "rope_factor": float(spec["factor"])}
  if kind == "llama3":
    return {**out, "rope_scaling": "llama3", "rope_factor": float(spec["factor"]),
            "rope_low_freq_factor": float(spec["low_freq_factor"]),
            "rope_high_freq_factor": float(spec["high_freq_factor"]),
            "rope_original_max_len": int(spec["original_max_position_embeddings"])}
  raise UserError(f"{where}: rope scaling {kind!r} is not supported (supported: default, linear, llama3)")


def model_type(cfg) -> str:
  """The Hugging Face architecture a ModelConfig is exactly, or a UserError naming why there is none."""
  gpt2 = (cfg.position, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu")
  llama = (cfg.position, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu")
  if gpt2 and cfg.n_kv_heads == cfg.n_heads and not cfg.qkv_bias and not cfg.sliding_window:
    return "gpt2"
  if llama and not cfg.use_bias and not (cfg.qkv_bias and cfg.sliding_window):
    return "qwen2" if cfg.qkv_bias else "mistral" if cfg.sliding_window else "llama"
  raise UserError("this model has no Hugging Face equivalent: export writes GPT-2 (learned positions, layernorm, "
                  "gelu, multi-head attention, no window) or Llama/Mistral/Qwen2 (rope, rmsnorm, swiglu, no "
                  f"biases but Qwen2's q/k/v ones); got position={cfg.position}, norm={cfg.norm}, mlp={cfg.mlp}, "
                  f"n_kv_heads={cfg.n_kv_heads}, use_bias={cfg.use_bias}, qkv_bias={cfg.qkv_bias}, "
                  f"sliding_window={cfg.sliding_window}")


def hf_config(cfg, kind: str, dtype: str = "float32", special_ids: dict | None = None) -> dict:
  """The config.json transformers builds `kind` from, for a ModelConfig (transformers 4 spelling, which 5 reads)."""
  ids = {f"{k}_token_id": v for k, v in (special_ids or {}).items() if v is not None}
  common = {"architectures": [ARCHITECTURES[kind]], "model_type": kind, "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": dtype, **ids}
  if kind == "gpt2":
    return {**common, "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
            "n_positions": cfg.max_len, "n_ctx": cfg.max_len, "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
  rope_scaling = None
  if cfg.rope_scaling == "linear":
    rope_scaling = {"rope_type": "linear", "factor": cfg.rope_factor}
  elif cfg.rope_scaling == "llama3":
    rope_scaling = {"rope_type": "llama3", "factor": cfg.rope_factor, "low_freq_factor": cfg.rope_low_freq_factor,
                    "high_freq_factor": cfg.rope_high_freq_factor,
                    "original_max_position_embeddings": cfg.rope_original_max_len}
  out = {**common, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
         "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
         "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
         "rope_scaling": rope_scaling, "hidden_act": "silu", "attention_dropout": 0.0}
  if kind == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  if kind == "mistral":
    out["sliding_window"] = cfg.sliding_window
  if kind == "qwen2":
    out.update(use_sliding_window=False, sliding_window=None)
  return out


@dataclasses.dataclass(frozen=True)
class Group:
  """Some HF tensors <-> some of our params. `ours` paths may be absent from a model (GPT-2 biases of a model
  without them): export then writes zeros of the HF shapes, which compute the same function."""
  hf: tuple  # HF tensor names
  ours: tuple  # our param paths ("layer_0/attn/q")
  to_ours: Callable  # list of HF arrays -> list of our arrays
  to_hf: Callable  # list of our arrays -> list of HF arrays
  hf_shapes: tuple  # the HF tensors' shapes


def _same(xs):
  return list(xs)


def _t(xs):
  return [x.T for x in xs]


def tensor_groups(cfg, kind: str) -> list:
  """Every Group of a model of this ModelConfig as Hugging Face `kind` lays it out."""
  d, h, kv, hd, ff, v = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
  one = lambda name, ours, shape, to_ours=_same, to_hf=_same: Group((name,), (ours,), to_ours, to_hf, (shape,))
  groups = []
  if kind == "gpt2":
    groups += [one("transformer.wte.weight", "embed/embedding", (v, d)),
               one("transformer.wpe.weight", "pos_embed", (cfg.max_len, d)),
               one("transformer.ln_f.weight", "ln_final/scale", (d,)),
               one("transformer.ln_f.bias", "ln_final/bias", (d,))]
    for i in range(cfg.n_layers):
      p, o = f"transformer.h.{i}.", f"layer_{i}/"
      groups += [
          one(p + "ln_1.weight", o + "ln_attn/scale", (d,)), one(p + "ln_1.bias", o + "ln_attn/bias", (d,)),
          one(p + "ln_2.weight", o + "ln_mlp/scale", (d,)), one(p + "ln_2.bias", o + "ln_mlp/bias", (d,)),
          Group((p + "attn.c_attn.weight",), tuple(o + f"attn/{n}" for n in "qkv"),
                lambda xs: [w.reshape(d, h, hd) for w in np.split(xs[0], 3, axis=1)],
                lambda xs: [np.concatenate([w.reshape(d, h * hd) for w in xs], axis=1)], ((d, 3 * d),)),
          Group((p + "attn.c_attn.bias",), tuple(o + f"attn/{n}_bias" for n in "qkv"),
                lambda xs: [b.reshape(h, hd) for b in np.split(xs[0], 3)],
                lambda xs: [np.concatenate([b.reshape(-1) for b in xs])], ((3 * d,),)),
          one(p + "attn.c_proj.weight", o + "attn/o", (d, d), lambda xs: [xs[0].reshape(h, hd, d)],
              lambda xs: [xs[0].reshape(h * hd, d)]),
          one(p + "attn.c_proj.bias", o + "attn/o_bias", (d,)),
          one(p + "mlp.c_fc.weight", o + "mlp/up/kernel", (d, ff)), one(p + "mlp.c_fc.bias", o + "mlp/up/bias", (ff,)),
          one(p + "mlp.c_proj.weight", o + "mlp/down/kernel", (ff, d)),
          one(p + "mlp.c_proj.bias", o + "mlp/down/bias", (d,))]
  else:
    groups += [one("model.embed_tokens.weight", "embed/embedding", (v, d)),
               one("model.norm.weight", "ln_final/scale", (d,))]
    heads = lambda n: (lambda xs: [xs[0].T.reshape(d, n, hd)], lambda xs: [xs[0].reshape(d, n * hd).T])
    head_bias = lambda n: (lambda xs: [xs[0].reshape(n, hd)], lambda xs: [xs[0].reshape(-1)])
    for i in range(cfg.n_layers):
      p, o = f"model.layers.{i}.", f"layer_{i}/"
      groups += [one(p + "input_layernorm.weight", o + "ln_attn/scale", (d,)),
                 one(p + "post_attention_layernorm.weight", o + "ln_mlp/scale", (d,))]
      for n, count in (("q", h), ("k", kv), ("v", kv)):
        groups.append(one(p + f"self_attn.{n}_proj.weight", o + f"attn/{n}", (count * hd, d), *heads(count)))
        if cfg.qkv_bias:
          groups.append(one(p + f"self_attn.{n}_proj.bias", o + f"attn/{n}_bias", (count * hd,), *head_bias(count)))
      groups += [one(p + "self_attn.o_proj.weight", o + "attn/o", (d, h * hd), lambda xs: [xs[0].T.reshape(h, hd, d)],
                     lambda xs: [xs[0].reshape(h * hd, d).T]),
                 one(p + "mlp.gate_proj.weight", o + "mlp/gate/kernel", (ff, d), _t, _t),
                 one(p + "mlp.up_proj.weight", o + "mlp/up/kernel", (ff, d), _t, _t),
                 one(p + "mlp.down_proj.weight", o + "mlp/down/kernel", (d, ff), _t, _t)]
  if not cfg.tie_embeddings:
    groups.append(one("lm_head.weight", "lm_head/kernel", (v, d), _t, _t))
  return groups


# Tensors a checkpoint may hold that are not weights: causal-mask and RoPE buffers of older transformers.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def canonical(name: str, kind: str) -> str:
  """A tensor name as `tensor_groups` spells it: GPT-2 files saved from GPT2Model lack the `transformer.`
  prefix (the original openai-community/gpt2 file does)."""
  if kind == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
    return "transformer." + name
  return name


def is_buffer(name: str) -> bool:
  return name.endswith(BUFFER_SUFFIXES)
