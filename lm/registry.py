"""Plug-ins registered by file name: objectives, tasks and rewards are each a package whose modules are the
choices ("grpo" -> lm/objectives/grpo.py). Adding one is adding a file; a module whose name starts with "_" is
private."""
import importlib
import pkgutil

from lm.errors import UserError


class Registry:

  def __init__(self, package: str, what: str):
    self.package, self.what = package, what  # what: how an error names the choice, e.g. "objective.name"

  def names(self) -> list:
    pkg = importlib.import_module(self.package)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))

  def get(self, name: str):
    if name not in self.names():
      raise UserError(f"{self.what}={name!r} is unknown; available: {', '.join(self.names())}")
    return importlib.import_module(f"{self.package}.{name}")
