"""Decoder-only transformer in Flax Linen: GPT-2 style and Llama/Mistral style behind config switches.

Params carry logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, and `layers` for the
leading axis of scanned layers); activations carry `batch`, `length`, `act_*` names. Only `lm/sharding.py` maps
names to mesh axes.

Layers are unrolled (params `layer_0/...`, `layer_1/...`) or, with `scan_layers`, one `nn.scan` over stacked
params (`layers/...` with a leading layer axis), so XLA compiles one layer instead of n_layers.
`lm/layer_layout.py` converts params between the two layouts; the same params give the same logits in both.

Attention masking is positional, so one code path serves training, packed rows and KV-cache decoding: a query
at (position p, segment s) sees a key at (position q, segment s') iff s == s' != 0, q <= p and, with a sliding
window w, p - q < w. Segment 0 marks padding and empty cache slots.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import options
from lm.options import option

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig(options.Group):
  """The `model.*` config group. Parsed configs have n_kv_heads and d_ff resolved (never 0)."""
  vocab_size: int = option(264, min=1, doc="256 bytes + 6 specials, padded to a multiple of 8 so it shards evenly")
  d_model: int = option(128, min=1)
  n_layers: int = option(4, min=1)
  n_heads: int = option(4, min=1)
  n_kv_heads: int = option(0, min=0, doc="0: n_heads; fewer: grouped-query attention")
  d_ff: int = option(0, min=0, doc="0: 4 * d_model")
  max_len: int = option(64, min=1, doc="context length (and the learned position table's size)")
  norm: str = option("layernorm", choices=("layernorm", "rmsnorm"))
  mlp: str = option("gelu", choices=("gelu", "swiglu", "relu2"), doc="relu2: relu(x)^2 (modded-nanogpt)")
  position: str = option("learned", choices=("learned", "rope"))
  rope_theta: float = option(10000.0, above=0)
  # Context extension of a RoPE model, as in its Hugging Face config: linear divides every frequency by
  # rope_factor; llama3 (Llama 3.1) divides only the low frequencies, blending the band in between.
  rope_scaling: str = option("none", choices=("none", "linear", "llama3"))
  rope_factor: float = option(1.0, above=0)
  rope_low_freq_factor: float = option(1.0, above=0, doc="llama3 scaling")
  rope_high_freq_factor: float = option(4.0, above=0, doc="llama3 scaling")
  rope_original_max_len: int = option(8192, min=1, doc="llama3 scaling: the context before extension")
  use_bias: bool = option(False, doc="biases in every projection and LayerNorm (GPT-2)")
  qkv_bias: bool = option(False, doc="biases in the q, k, v projections only (Qwen2); implied by use_bias")
  tie_embeddings: bool = option(True)
  qk_norm: bool = option(False, doc="RMS-normalise queries and keys per head (no params): |logit| <= sqrt(head_dim)")
  zero_init_out: bool = option(False, doc="attention and MLP output projections start at 0: each block is the "
                               "identity at init")
  sliding_window: int = option(0, min=0, doc="0: full causal attention")
  dropout: float = option(0.0, min=0.0, max=0.999)
  norm_eps: float = option(1e-5, above=0)
  dtype: str = option("float32", choices=tuple(DTYPES))
  param_dtype: str = option("float32", choices=tuple(DTYPES))
  remat: str = option("none", choices=("none", *REMAT_POLICIES))
  scan_layers: bool = option(False, doc="stack the layers' params and run one nn.scan over them: compile time no "
                                        "longer grows with n_layers")
  # cudnn ignores segment ids: unpacked data only; auto: cudnn on GPUs
  attention_impl: str = option("xla", choices=("xla", "cudnn", "auto"))

  def check(self, config) -> list:
    problems = []
    if self.d_model % self.n_heads:
      problems.append(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
    kv = self.n_kv_heads or self.n_heads
    if self.n_heads % kv:
      problems.append(f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={kv}")
    if self.position == "rope" and (self.d_model // self.n_heads) % 2:
      problems.append(f"rope needs an even head dim, got d_model/n_heads = {self.d_model // self.n_heads}")
    if self.rope_scaling == "llama3" and not self.rope_low_freq_factor < self.rope_high_freq_factor:
      problems.append(f"model.rope_low_freq_factor={self.rope_low_freq_factor} must be below "
                      f"model.rope_high_freq_factor={self.rope_high_freq_factor}")
    return problems

  @classmethod
  def from_config(cls, model_cfg) -> "ModelConfig":
    cfg = cls.parse(model_cfg, "model")
    return dataclasses.replace(cfg, n_kv_heads=cfg.n_kv_heads or cfg.n_heads, d_ff=cfg.d_ff or 4 * cfg.d_model)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads


def _init(std, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(std) if std else nn.initializers.zeros, axes)


def _out_std(cfg: ModelConfig) -> float:
  """Init std of the residual-branch output projections (GPT-2's 0.02 / sqrt(2 n_layers)); 0: zeros."""
  return 0.0 if cfg.zero_init_out else 0.02 / (2 * cfg.n_layers) ** 0.5


def _rms(x, eps):
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def _norm(cfg: ModelConfig, name: str):
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype],
                      scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, use_bias=cfg.use_bias, dtype=DTYPES[cfg.dtype],
                      param_dtype=DTYPES[cfg.param_dtype], scale_init=scale_init,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), name=name)


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
  """[head_dim / 2] float32 rotation frequencies, with the config's context-extension scaling (the formulas of
  Hugging Face's `_compute_llama3_parameters`, so converted checkpoints match)."""
  d = cfg.head_dim
  freqs = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
  if cfg.rope_scaling == "linear":
    freqs = freqs / cfg.rope_factor
  elif cfg.rope_scaling == "llama3":
    wavelen = 2 * np.pi / freqs
    old, lo, hi = cfg.rope_original_max_len, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    scaled = np.where(wavelen > old / lo, freqs / cfg.rope_factor, freqs)
    smooth = (old / wavelen - lo) / (hi - lo)
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    freqs = np.where(medium, (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled, scaled)
  return freqs.astype(np.float32)


def rope(x, positions, freqs):
  """Rotary embedding (rotate-half form, as Llama in Hugging Face) of x [B, T, H, D] at integer positions [B, T],
  rotating the pairs (i, i + D/2) at `freqs` [D/2]."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(freqs)  # [B, T, D/2]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_mask(q_pos, q_seg, kv_pos, kv_seg, window: int):
  """[B, 1, T, S] boolean mask; see the module docstring."""
  same = (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0)
  causal = kv_pos[:, None, :] <= q_pos[:, :, None]
  mask = same & causal
  if window:
    mask &= (q_pos[:, :, None] - kv_pos[:, None, :]) < window
  return mask[:, None, :, :]


class Attention(nn.Module):
  cfg: ModelConfig

  def _param(self, name, shape, axes, std, bias_axes, use_bias):
    """Kernel (and bias) in compute dtype; kernels keep their (heads, head_dim) shape and logical names."""
    cfg = self.cfg
    kernel = self.param(name, _init(std, axes), shape, DTYPES[cfg.param_dtype]).astype(DTYPES[cfg.dtype])
    bias = None
    if use_bias:
      bias_shape = shape[-len(bias_axes):]
      bias = self.param(name + "_bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes), bias_shape,
                        DTYPES[cfg.param_dtype]).astype(DTYPES[cfg.dtype])
    return kernel, bias

  @nn.compact
  def __call__(self, x, positions, segment_ids, layer_cache, kv_pos, kv_seg, cache_index):
    cfg = self.cfg
    x = x.astype(DTYPES[cfg.dtype])
    std, (b, t, d), hd = 0.02, x.shape, cfg.head_dim
    heads = {"q": (cfg.n_heads, "heads"), "k": (cfg.n_kv_heads, "kv_heads"), "v": (cfg.n_kv_heads, "kv_heads")}
    qkv_bias = cfg.use_bias or cfg.qkv_bias
    params = {n: self._param(n, (d, h, hd), ("embed", axis, "head_dim"), std, (axis, "head_dim"), qkv_bias)
              for n, (h, axis) in heads.items()}
    # One [b*t, d] x [d, (h_q + 2 h_kv) * hd] matmul. With 2-D operands the weight gradient contracts one axis;
    # contracting (b, t) made XLA:CPU transpose the whole activation gradient first (measured: ~15% of a
    # step). One large dot also beats three small ones on CPU.
    w = jnp.concatenate([params[n][0].reshape(d, -1) for n in heads], axis=1)
    qkv = x.reshape(b * t, d) @ w
    if qkv_bias:
      qkv = qkv + jnp.concatenate([params[n][1].reshape(-1) for n in heads])
    q, k, v = (y.reshape(b, t, heads[n][0], hd) for n, y in
               zip(heads, jnp.split(qkv, [cfg.n_heads * hd, (cfg.n_heads + cfg.n_kv_heads) * hd], axis=1)))
    if cfg.qk_norm:
      q, k = _rms(q, cfg.norm_eps), _rms(k, cfg.norm_eps)
    if cfg.position == "rope":
      freqs = rope_frequencies(cfg)
      q, k = rope(q, positions, freqs), rope(k, positions, freqs)
    q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("batch", "length", "act_kv_heads", "head_dim"))

    new_cache = None
    if layer_cache is None:
      kv_pos, kv_seg = positions, segment_ids
    else:  # write this step's keys/values at cache_index, then attend over the whole cache
      k = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), (0, cache_index, 0, 0))
      v = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), (0, cache_index, 0, 0))
      new_cache = {"k": k, "v": v}
      k, v = k.astype(q.dtype), v.astype(q.dtype)

    use_cudnn = cfg.attention_impl == "cudnn" or (cfg.attention_impl == "auto" and jax.default_backend() == "gpu")
    if use_cudnn and layer_cache is None:
      out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn",
                                         local_window_size=(cfg.sliding_window - 1, 0) if cfg.sliding_window else None)
    else:
      mask = attention_mask(positions, segment_ids, kv_pos, kv_seg, cfg.sliding_window)
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    out = nn.with_logical_constraint(out, ("batch", "length", "act_heads", "head_dim"))
    wo, bo = self._param("o", (cfg.n_heads, hd, d), ("heads", "head_dim", "embed"), _out_std(cfg), ("embed",),
                         cfg.use_bias)
    out = out.reshape(b * t, cfg.n_heads * hd) @ wo.reshape(-1, d)
    if bo is not None:
      out = out + bo
    return out.reshape(b, t, d), new_cache


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    shape = x.shape
    x = x.reshape(-1, shape[-1])  # [b*t, d]: see Attention for why matmuls run on 2-D operands
    dense = functools.partial(nn.Dense, use_bias=cfg.use_bias, dtype=DTYPES[cfg.dtype],
                              param_dtype=DTYPES[cfg.param_dtype])
    if cfg.mlp == "swiglu":
      gate = dense(cfg.d_ff, kernel_init=_init(0.02, ("embed", "mlp")), name="gate")(x)
      up = dense(cfg.d_ff, kernel_init=_init(0.02, ("embed", "mlp")), name="up")(x)
      h = nn.silu(gate) * up
    elif cfg.mlp == "relu2":
      h = jnp.square(nn.relu(dense(cfg.d_ff, kernel_init=_init(0.02, ("embed", "mlp")), name="up")(x)))
    else:
      h = nn.gelu(dense(cfg.d_ff, kernel_init=_init(0.02, ("embed", "mlp")), name="up")(x))
    h = nn.with_logical_constraint(h, ("batch", "act_mlp"))
    return dense(cfg.d_model, kernel_init=_init(_out_std(cfg), ("mlp", "embed")), name="down")(h).reshape(shape)


class Block(nn.Module):
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, positions, segment_ids, layer_cache, kv_pos, kv_seg, cache_index):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic or cfg.dropout == 0.0)
    h, new_cache = Attention(cfg, name="attn")(_norm(cfg, "ln_attn")(x), positions, segment_ids, layer_cache,
                                               kv_pos, kv_seg, cache_index)
    x = x + drop(h)
    x = x + drop(Mlp(cfg, name="mlp")(_norm(cfg, "ln_mlp")(x)))
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), new_cache


class Transformer(nn.Module):
  """apply(params, tokens, positions=None, segment_ids=None, cache=None) -> (logits float32, new cache).

  tokens, positions, segment_ids: [B, T] int32. With a cache (see `init_cache`), the T new tokens are written
  at slots cache["index"]..+T and attend to everything valid in the cache.
  `return_hidden=True` also returns the final hidden states (for value and reward heads).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None, cache=None, deterministic=True,
               return_hidden=False):
    cfg = self.cfg
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype],
                     embedding_init=_init(0.02, ("vocab", "embed")), name="embed")
    x = embed(tokens)
    if cfg.position == "learned":
      pos_embed = self.param("pos_embed", _init(0.02, ("pos", "embed")), (cfg.max_len, cfg.d_model),
                             DTYPES[cfg.param_dtype])
      x = x + jnp.take(pos_embed, positions, axis=0).astype(x.dtype)
    x = nn.Dropout(cfg.dropout, deterministic=deterministic or cfg.dropout == 0.0)(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))

    kv_pos = kv_seg = index = None
    if cache is not None:
      index = cache["index"]
      kv_pos = jax.lax.dynamic_update_slice(cache["pos"], positions, (0, index))
      kv_seg = jax.lax.dynamic_update_slice(cache["seg"], segment_ids, (0, index))
    block = Block
    if cfg.remat != "none":  # inside a scan, CSE cannot undo the remat, so it need not be prevented (JAX's advice)
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:  # x is the carry; each layer's cache slice goes in, its updated slice comes out
      b_ = nn.broadcast
      layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                       in_axes=(b_, b_, 0, b_, b_, b_), length=cfg.n_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, new_layers = layers(cfg, deterministic, name="layers")(
          x, positions, segment_ids, None if cache is None else cache["layers"], kv_pos, kv_seg, index)
    else:
      new_layers = []
      for i in range(cfg.n_layers):
        layer_cache = None if cache is None else cache["layers"][i]
        x, c = block(cfg, deterministic, name=f"layer_{i}")(x, positions, segment_ids, layer_cache, kv_pos, kv_seg,
                                                            index)
        new_layers.append(c)
    hidden = _norm(cfg, "ln_final")(x)
    flat = hidden.reshape(b * t, cfg.d_model)
    if cfg.tie_embeddings:
      logits = embed.attend(flat)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=DTYPES[cfg.dtype],
                        param_dtype=DTYPES[cfg.param_dtype], kernel_init=_init(0.02, ("embed", "vocab")),
                        name="lm_head")(flat)
    logits = logits.reshape(b, t, cfg.vocab_size)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))
    new_cache = None
    if cache is not None:
      new_cache = {"index": index + t, "pos": kv_pos, "seg": kv_seg, "layers": new_layers}
    if return_hidden:
      return logits, new_cache, hidden
    return logits, new_cache


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None):
  """Empty KV cache for `length` slots: segment 0 marks a slot as empty. Per layer keys and values: a list of
  n_layers {k, v}, or with scan_layers one {k, v} stacked on a leading layer axis."""
  dtype = DTYPES[cfg.dtype] if dtype is None else dtype
  shape = (batch, length, cfg.n_kv_heads, cfg.head_dim)
  if cfg.scan_layers:
    layers = {"k": jnp.zeros((cfg.n_layers, *shape), dtype), "v": jnp.zeros((cfg.n_layers, *shape), dtype)}
  else:
    layers = [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layers)]
  return {"index": jnp.zeros((), jnp.int32), "pos": jnp.zeros((batch, length), jnp.int32),
          "seg": jnp.zeros((batch, length), jnp.int32), "layers": layers}


def repeat_rows(x, n: int):
  """[B, ...] -> [B * n, ...], each row n times in a row (jnp.repeat's result, as a broadcast and a reshape)."""
  if n == 1:
    return x
  return jnp.broadcast_to(x[:, None], (x.shape[0], n, *x.shape[1:])).reshape(x.shape[0] * n, *x.shape[1:])


def repeat_cache(cfg: ModelConfig, cache, n: int):
  """A KV cache with each row n times in a row: one prompt's cache for each of its n samples."""
  layers = jax.tree.map(jax.vmap(lambda x: repeat_rows(x, n)) if cfg.scan_layers else lambda x: repeat_rows(x, n),
                        cache["layers"])
  return {**cache, "pos": repeat_rows(cache["pos"], n), "seg": repeat_rows(cache["seg"], n), "layers": layers}


def build(model_cfg) -> Transformer:
  return Transformer(ModelConfig.from_config(model_cfg))


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 x matmul params plus attention (PaLM appendix B convention)."""
  attn = cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
  mlp = cfg.d_model * cfg.d_ff * (3 if cfg.mlp == "swiglu" else 2)
  head = cfg.d_model * cfg.vocab_size
  n = cfg.n_layers * (attn + mlp) + head
  ctx = min(seq_len, cfg.sliding_window) if cfg.sliding_window else seq_len
  return 6.0 * n + 12.0 * cfg.n_layers * cfg.d_model * ctx
