"""Evaluation shared by every stage. Held-out bits per byte here; task metrics live beside it."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lm import sharding
from lm.objectives.pretrain import apply_lm, token_nll


@functools.partial(jax.jit, static_argnames=("model",))
def _nll_sums(model, params, batch, bytes_per_token):
  nll, _ = token_nll(apply_lm(model, params, batch), batch["targets"])
  w = batch["weights"]
  return {"nll": (nll * w).sum(), "tokens": w.sum(), "bytes": (bytes_per_token[batch["targets"]] * w).sum()}


def bits_per_byte(model, params, batches, tokenizer, mesh) -> dict:
  """loss (nats/token) and bits_per_byte over an iterable of token batches, summed exactly (no sampling)."""
  bpt = jnp.asarray(tokenizer.bytes_per_token(), jnp.float32)
  total = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
  for local in batches:
    sums = _nll_sums(model, params, sharding.global_batch(local, mesh), bpt)
    for k in total:
      total[k] += float(sums[k])
  return {"loss": total["nll"] / max(total["tokens"], 1.0),
          "bits_per_byte": total["nll"] / math.log(2) / max(total["bytes"], 1.0),
          "eval_tokens": int(total["tokens"])}
