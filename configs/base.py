"""Shared defaults. Every experiment config starts from `get_config()` and overrides what it needs.

Groups: model.*, data.*, train.*, objective.*, eval.*, mesh.*, checkpoint.*; `seed` and `tokenizer` on top.
Each group's keys, defaults, allowed values and meaning are declared once, beside the code that reads them
(lm/config.py lists where); the defaults here are nanoGPT's CPU Shakespeare run (configs/pretrain_shakespeare.py).
"""
import ml_collections

from lm import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tokenizer = "byte"
  for name, group in config_lib.groups().items():
    c[name] = group.config()
  c.objective = ml_collections.ConfigDict({"name": "pretrain"})
  return c
