"""The next-token loss every stage shares, beside the model (as Levanter keeps its loss next to its LM).

Pretraining and SFT train on it, evaluation sums it into bits per byte, policy gradient's pretraining mix
(PPO-ptx) adds it, and the dry run and benchmarks compile it.
"""
import jax
import jax.numpy as jnp


def token_nll(logits, targets):
  """Per-token negative log-likelihood (nats) and log-partition, from float32 logits."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  return logz - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0], logz


def lm_loss(logits, batch, z_loss: float = 0.0):
  """Mean NLL over weighted target tokens (+ z_loss * mean log Z^2)."""
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


def apply_lm(model, params, batch, rng=None):
  """Logits for a token batch (inputs, positions, segment_ids); dropout is on iff an rng is given."""
  logits, _ = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
                          deterministic=rng is None, rngs={"dropout": rng} if rng is not None else None)
  return logits


def token_loss_fn(model, z_loss: float = 0.0):
  """(params, batch, rng) -> (loss, metrics): the train step's loss for any token objective."""
  def loss_fn(params, batch, rng):
    return lm_loss(apply_lm(model, params, batch, rng if model.cfg.dropout else None), batch, z_loss)
  return loss_fn
