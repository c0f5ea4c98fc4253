"""Print samples from a run's checkpoint: launch.py --config=configs/sample.py --config.checkpoint=RUN."""
import jax

from lm import runs
from lm import sampling


def run(config):
  setup, params = runs.load(config.checkpoint)
  rng = jax.random.PRNGKey(config.seed)
  with setup.use():
    for i in range(config.num_samples):
      text = sampling.sample_text(setup.model, params, setup.tokenizer, config.prompt, config.max_new_tokens,
                                  jax.random.fold_in(rng, i), temperature=config.temperature, top_k=config.top_k)
      print(text)
      print("-" * 40)
