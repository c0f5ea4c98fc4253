"""Sample from a trained run: launch.py --config=configs/sample.py --config.checkpoint=runs/x --config.prompt=ROMEO:"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "sample"
  c.checkpoint = ""  # a run directory (its --workdir)
  c.prompt = "ROMEO:"
  c.num_samples = 3
  c.max_new_tokens = 200
  c.temperature = 0.8
  c.top_k = 0
  c.seed = 0
  return c
