"""Why LoRA SFT from the converted Shakespeare model does not learn addition (experiments/HF_NOTES.md): fit ONE
batch of 48 problems for 150 Adam steps and print (step, loss, grad norm) every 15 steps.

python experiments/lora_overfit.py RANK LR [embed]    # RANK 0: full fine-tuning; `embed`: lora.train_embeddings
                                                      # (the embedding and position tables train beside them;
                                                      # HF_NOTES's 0.84 was measured with the embedding only)
Needs runs/shakespeare_hf (python -m lm.hf.export --checkpoint=runs/shakespeare runs/shakespeare_hf).
"""
import sys

import jax
import jax.numpy as jnp
import optax

from configs import sft_addition_lora
from lm import losses
from lm import lora
from lm import tasks
from lm.data import sft as sft_data
from lm.setup import Setup


def main(rank: int, lr: float, embed: bool):
  c = sft_addition_lora.get_config()
  c.lora.update(rank=rank, train_embeddings=embed)
  setup = Setup(c)
  task = tasks.get("addition", digits=3, pad=True, width=4)
  records = [{"prompt": e.prompt, "answer": e.answer} for e in task.examples("train", 48, seed=0)]
  examples, _ = sft_data.prepare(setup.tokenizer, records, 64)
  batch = {k: jnp.asarray(v) for k, v in sft_data.pack(examples, 64).items()}
  with setup.use():
    params = setup.init_from(c.checkpoint.init_from, jax.random.PRNGKey(0))
  train, frozen = lora.split(params)

  def loss_fn(t):
    return losses.lm_loss(losses.apply_lm(setup.model, lora.join(t, frozen), batch), batch)[0]

  opt = optax.adam(lr)

  @jax.jit
  def step(t, s):
    loss, g = jax.value_and_grad(loss_fn)(t)
    u, s = opt.update(g, s, t)
    return optax.apply_updates(t, u), s, loss, optax.global_norm(g)

  state, out = opt.init(train), []
  for i in range(150):
    train, state, loss, gnorm = step(train, state)
    if i % 15 == 0:
      out.append((i, round(float(loss), 3), round(float(gnorm), 3)))
  print(f"rank {rank} lr {lr} embed {embed}: {out}")


if __name__ == "__main__":
  main(int(sys.argv[1]), float(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "embed")
