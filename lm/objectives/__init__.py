"""Objectives, registered by file name: `config.objective.name = "pretrain"` loads lm/objectives/pretrain.py.

An objective module declares its options (`Options`, an lm.options.Group checked against config.objective) and
`build(setup) -> lm.objective.Objective`. Adding an objective is adding a file (plus a config).
"""
from lm.registry import Registry

REGISTRY = Registry("lm.objectives", "objective.name")


def names() -> list:
  return REGISTRY.names()


def get(name: str):
  return REGISTRY.get(name)


def build(setup):
  """The objective config.objective.name names, its options checked first."""
  return get(setup.config.objective.name).build(setup)


def config(name: str, **overrides):
  """config.objective for objective `name`: its declared defaults with `overrides`, plus the name."""
  cfg = get(name).Options.config(**overrides)
  cfg.name = name
  return cfg
