"""Next-token prediction on plain text: cross-entropy over a weight mask, optional z-loss."""
import jax
import jax.numpy as jnp

from lm.data import lm_batches
from lm.objectives import Objective


def token_nll(logits, targets):
  """Per-token negative log-likelihood (nats) and log-partition, from float32 logits."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  return logz - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0], logz


def lm_loss(logits, batch, z_loss: float = 0.0):
  """Mean NLL over weighted target tokens (+ z_loss * mean log Z^2); the loss every token objective shares."""
  nll, logz = token_nll(logits, batch["targets"])
  w = batch["weights"]
  n = jnp.maximum(w.sum(), 1.0)
  loss = (nll * w).sum() / n
  metrics = {"loss": loss, "tokens": w.sum()}
  if z_loss:
    zl = z_loss * (jnp.square(logz) * w).sum() / n
    metrics["z_loss"] = zl
    loss = loss + zl
  return loss, metrics


def apply_lm(model, params, batch, rng=None, **kw):
  """Logits for a token batch; dropout is on iff an rng is given."""
  logits, _ = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
                          deterministic=rng is None, rngs={"dropout": rng} if rng is not None else None, **kw)
  return logits


def token_loss_fn(model, z_loss: float = 0.0):
  def loss_fn(params, batch, rng):
    return lm_loss(apply_lm(model, params, batch, rng if model.cfg.dropout else None), batch, z_loss)
  return loss_fn


def build(config, model, tokenizer) -> Objective:
  tokens = lm_batches.split_tokens(config.data, config.data.train_split, tokenizer)
  source = lm_batches.RandomWindows(tokens, config.data.seq_len, config.train.batch_size, config.seed)
  return Objective(loss_fn=token_loss_fn(model, config.train.z_loss), batches=source)
