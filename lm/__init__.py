"""lm: pretraining, fine-tuning and policy-gradient training of language models in JAX/Flax."""
