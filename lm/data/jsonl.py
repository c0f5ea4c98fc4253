"""Local JSONL files of prompt/answer or chat examples, as a TFDS dataset read with grain.

One JSON object per line, either {"prompt": str, "answer": str} or {"messages": [{"role", "content"}, ...]}
(roles system/user/assistant, at least one assistant turn); other keys are ignored and blank lines skipped.
Like sources.TextFolder, the files are prepared once to array_record (sources.local_builder), so editing a file
re-prepares it.
"""
import glob
import json
import os

import tensorflow_datasets as tfds

from lm.data import sources
from lm.errors import UserError

ROLES = ("system", "user", "assistant")


def files(spec: str) -> list:
  """A .jsonl file, a directory (every *.jsonl under it) or a glob -> sorted absolute paths."""
  spec = os.path.expanduser(spec or "")
  if not spec:
    raise UserError("no JSONL training data: set --config.objective.train_files (or objective.task)")
  if os.path.isdir(spec):
    found = glob.glob(os.path.join(spec, "**", "*.jsonl"), recursive=True)
  elif os.path.isfile(spec):
    found = [spec]
  else:
    found = glob.glob(spec, recursive=True)
  if not found:
    raise UserError(f"{spec!r} matches no JSONL file (give a .jsonl file, a directory of them, or a glob)")
  return sorted(os.path.abspath(p) for p in found)


def load_object(line: str, where: str, what: str) -> dict:
  """One line -> its JSON object; UserError naming `where` and `what` the object should hold otherwise."""
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(obj, dict):
    raise UserError(f"{where}: expected a JSON object with {what}, got {type(obj).__name__}")
  return obj


def parse_line(line: str, where: str) -> dict:
  """One line -> {"prompt", "answer", "messages"} (the unused form empty); UserError naming `where` if malformed."""
  obj = load_object(line, where, "prompt/answer or messages")
  if "messages" in obj:
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
      raise UserError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(msgs):
      if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
        raise UserError(f"{where}: messages[{i}] must be {{\"role\": one of {'/'.join(ROLES)}, "
                        f"\"content\": string}}, got {json.dumps(m)[:80]}")
    if not any(m["role"] == "assistant" for m in msgs):
      raise UserError(f"{where}: messages have no assistant turn, so there is nothing to train on")
    return {"prompt": "", "answer": "", "messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}
  missing = [k for k in ("prompt", "answer") if not isinstance(obj.get(k), str)]
  if missing:
    raise UserError(f"{where}: {' and '.join(missing)} missing or not a string "
                    "(each line needs {\"prompt\": ..., \"answer\": ...} or {\"messages\": [...]})")
  return {"prompt": obj["prompt"], "answer": obj["answer"], "messages": []}


def read(path: str, parse=parse_line):
  """Yield (where, parse(line, where)) for every non-blank line of a JSONL file."""
  try:
    f = open(path, encoding="utf-8")
  except OSError as e:
    raise UserError(f"cannot read {path}: {e.strerror}") from None
  with f:
    lineno = 0
    try:
      for lineno, line in enumerate(f, 1):
        if line.strip():
          where = f"{path}:{lineno}"
          yield where, parse(line, where)
    except UnicodeDecodeError:
      raise UserError(f"{path}:{lineno + 1}: not UTF-8 text; convert the file (e.g. iconv -t utf-8)") from None


class JsonlFiles(tfds.core.GeneratorBasedBuilder):
  """Splits are given as {split: [paths]}; each record keeps `where` (file:line) for error messages.
  Another JSONL format subclasses it with its own `parse` and `_info` (lm/data/preferences.py)."""

  VERSION = tfds.core.Version("1.0.0")
  parse = staticmethod(parse_line)

  def __init__(self, *, split_files: dict, **kwargs):
    self._split_files = split_files
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "prompt": tfds.features.Text(), "answer": tfds.features.Text(), "where": tfds.features.Text(),
        "messages": tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()}),
    }))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(paths) for split, paths in self._split_files.items()}

  def _generate_examples(self, paths):
    for path in paths:
      for where, record in read(path, self.parse):
        yield where, {**record, "where": where}


def source(split_files: dict, tfds_dir: str, builder_cls=JsonlFiles) -> dict:
  """{split: [paths]} -> {split: random-access source of records}; UserError for a malformed line or empty split."""
  # Check every line before TFDS starts writing, so a bad line is one clear error, not a failed Beam-like job.
  for split, paths in split_files.items():
    if not sum(1 for p in paths for _ in read(p, builder_cls.parse)):
      raise UserError(f"JSONL {split} data {', '.join(paths)} holds no examples")
  builder = sources.local_builder(builder_cls, builder_cls.name, split_files, os.path.expanduser(tfds_dir),
                                  split_files=split_files)
  return {split: sources.data_source(builder, split) for split in split_files}


def text(v) -> str:
  """A TFDS Text feature as read back (bytes) -> str."""
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def record(ex) -> dict:
  """A decoded TFDS example -> plain {"prompt", "answer", "messages", "where"} with str values."""
  s = text
  msgs = ex["messages"]
  messages = [{"role": s(r), "content": s(c)} for r, c in zip(msgs["role"], msgs["content"])]
  return {"prompt": s(ex["prompt"]), "answer": s(ex["answer"]), "messages": messages, "where": s(ex["where"])}
