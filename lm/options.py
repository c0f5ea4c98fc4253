"""Typed option groups. One frozen dataclass declares a config group's keys, defaults, allowed values and
ranges (as Levanter's typed configs and Tunix's GRPOConfig do); config files start from it
(`Group.config(**overrides)`), and `Group.parse(cfg, prefix, config)` checks a ConfigDict against it before
anything compiles, naming every problem at once, then returns the typed instance the code reads.

  @dataclasses.dataclass(frozen=True)
  class Options(options.Group):
    group_size: int = options.option(8, min=2, doc="samples per prompt")
    def check(self, config) -> list:  # cross-field rules, one string per problem
      return [] if config.train.batch_size % self.group_size == 0 else ["train.batch_size must ..."]
"""
import dataclasses
import difflib

import ml_collections

from lm.errors import UserError


def option(default, *, choices=None, min=None, max=None, above=None, doc: str = ""):  # noqa: A002 (min/max read well here)
  """A declared option: default, allowed values, inclusive bounds (min/max), a strict lower bound (above)."""
  meta = {"choices": tuple(choices) if choices else None, "min": min, "max": max, "above": above, "doc": doc}
  if isinstance(default, dict):
    return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def _plain(value):
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  if isinstance(value, list):
    return tuple(value)
  return value


def _type_problem(name: str, value, default) -> str | None:
  kind = type(default)
  ok = {bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, tuple),
        dict: lambda v: isinstance(v, dict)}.get(kind, lambda v: True)
  if not ok(value):
    return f"{name}={value!r} must be a {kind.__name__}"
  return None


class Group:
  """Base of an option group (a frozen dataclass). Subclasses may override `check(config)`."""

  @classmethod
  def config(cls, **overrides) -> ml_collections.ConfigDict:
    """The group's defaults as a ConfigDict (what a config file assigns), with `overrides` applied."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
      raise UserError(f"{cls.__qualname__} has no option {', '.join(unknown)}")
    values = {name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
              for name, f in fields.items()}
    values.update(overrides)
    return ml_collections.ConfigDict(values)

  @classmethod
  def problems(cls, cfg, prefix: str, config=None, ignore=()) -> tuple:
    """(instance or None, [problem, ...]) for the ConfigDict `cfg` of group `prefix` ("objective", ...)."""
    given = {k: _plain(v) for k, v in (cfg.items() if cfg is not None else ()) if k not in ignore}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = []
    for key in sorted(set(given) - set(fields)):
      near = difflib.get_close_matches(key, fields, n=1)
      problems.append(f"{prefix}.{key} is not an option here" + (f" (did you mean {prefix}.{near[0]}?)" if near
                                                                  else ""))
    values = {}
    for name, f in fields.items():
      default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
      value = given.get(name, default)
      values[name] = value
      key, m = f"{prefix}.{name}", f.metadata
      bad = _type_problem(key, value, default)
      if bad:
        problems.append(bad)
        continue
      if m.get("choices") and value not in m["choices"]:
        problems.append(f"{key}={value!r} must be one of {', '.join(map(str, m['choices']))}")
      if m.get("min") is not None and value < m["min"]:
        problems.append(f"{key}={value!r} must be >= {m['min']}")
      if m.get("max") is not None and value > m["max"]:
        problems.append(f"{key}={value!r} must be <= {m['max']}")
      if m.get("above") is not None and not value > m["above"]:
        problems.append(f"{key}={value!r} must be > {m['above']}")
    if problems:
      return None, problems
    instance = cls(**values)
    return instance, list(instance.check(config))

  @classmethod
  def parse(cls, cfg, prefix: str, config=None, ignore=()):
    instance, problems = cls.problems(cfg, prefix, config, ignore)
    if problems:
      raise UserError(format_problems(problems))
    return instance

  def check(self, config) -> list:
    """Cross-field rules: one string per problem (override in a group that has any)."""
    del config
    return []


def format_problems(problems: list, what: str = "invalid config") -> str:
  """One line, every problem: "invalid config: a.b=1 must be >= 2; c.d=..."."""
  return f"{what}: " + "; ".join(problems)
