"""Preference pairs: JSONL files of {"prompt", "chosen", "rejected"} (optional "annotator", "margin") as a TFDS
dataset read like SFT's JSONL (lm/data/jsonl.py: the same file/directory/glob rules, file:line errors, prepared
once as array_record), and the rows a reward model and DPO train on.

A pair is two rows of the chat template (lm/chat.py), `BOS <user> prompt <assistant> answer EOS`, chosen first,
right-padded to one length: `tokens`, `positions`, `segment_ids` (0 on padding) and `mask` (1 on the answer's
tokens and its EOS), each [pairs, 2, length]; `margin` and `weight` (1 for a real pair, 0 for eval padding),
each [pairs]. One forward pass over the 2 x pairs rows scores both answers.
"""
import dataclasses
import json
import math

import grain
import numpy as np
import tensorflow_datasets as tfds

from lm import chat
from lm import options
from lm.data import jsonl
from lm.data import sft as sft_data
from lm.data import sources
from lm.errors import UserError
from lm.options import option

SIDES = ("chosen", "rejected")


def parse_pair(line: str, where: str) -> dict:
  """One line -> {"prompt", "chosen", "rejected", "annotator", "margin"}; UserError naming `where` if malformed."""
  obj = jsonl.load_object(line, where, "prompt, chosen and rejected")
  missing = [k for k in ("prompt", *SIDES) if not isinstance(obj.get(k), str)]
  if missing:
    raise UserError(f"{where}: {', '.join(missing)} missing or not a string (each line needs "
                    "{\"prompt\": ..., \"chosen\": ..., \"rejected\": ...})")
  if obj["chosen"] == obj["rejected"]:
    raise UserError(f"{where}: chosen and rejected are the same answer, so the pair prefers nothing; remove it "
                    "(a tie is not a preference)")
  annotator, margin = obj.get("annotator", ""), obj.get("margin", 0.0)
  if not isinstance(annotator, str):
    raise UserError(f"{where}: annotator must be a string, got {json.dumps(annotator)[:40]}")
  if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
    raise UserError(f"{where}: margin must be a finite number, got {json.dumps(margin)[:40]}")
  return {"prompt": obj["prompt"], "chosen": obj["chosen"], "rejected": obj["rejected"], "annotator": annotator,
          "margin": float(margin)}


def to_line(prompt: str, chosen: str, rejected: str, annotator: str = "", margin: float = 0.0) -> str:
  """The JSONL line parse_pair reads (what `python -m lm.annotate export` and the simulated annotator write)."""
  obj = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
  if annotator:
    obj["annotator"] = annotator
  if margin:
    obj["margin"] = float(margin)
  return json.dumps(obj, ensure_ascii=False)


class PreferenceFiles(jsonl.JsonlFiles):
  """JSONL preference pairs; each record keeps `where` (file:line) for error messages."""

  VERSION = tfds.core.Version("1.0.0")
  parse = staticmethod(parse_pair)

  def _info(self):
    t = tfds.features.Text()
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "prompt": t, "chosen": t, "rejected": t, "annotator": t, "where": t, "margin": np.float32}))


def record(ex) -> dict:
  """A decoded TFDS example -> plain dict with str values and a float margin."""
  return {**{k: jsonl.text(ex[k]) for k in ("prompt", *SIDES, "annotator", "where")}, "margin": float(ex["margin"])}


def source(split_files: dict, tfds_dir: str) -> dict:
  """{split: [paths]} -> {split: random-access sequence of pair records} (grain-mapped TFDS sources)."""
  srcs = jsonl.source(split_files, tfds_dir, PreferenceFiles)
  return {split: grain.MapDataset.source(src).map(record) for split, src in srcs.items()}


# ---- rows ------------------------------------------------------------------------------------------------------

FIELDS = ("tokens", "positions", "segment_ids", "mask")  # [pairs, 2, length]; mask float32, the rest int32


def side_ids(tokenizer, prompt: str, answer: str, length: int, overlong: str, where: str) -> tuple:
  """(ids, answer mask, status) of one side fitted to `length` tokens; status "ok", "truncated" or "dropped"
  (ids None). A prompt that leaves no room for an answer is an error whatever `overlong` says."""
  p, a = chat.prompt_ids(tokenizer, prompt), chat.answer_ids(tokenizer, answer)
  if len(p) >= length:
    raise UserError(f"{where}: the prompt is {len(p)} tokens (with the chat template), which leaves no room for an "
                    f"answer in rows of objective.max_tokens={length}; shorten it, or raise objective.max_tokens "
                    "(at most model.max_len)")
  ids = np.concatenate([p, a]).astype(np.int32)
  mask = np.concatenate([np.zeros(len(p)), np.ones(len(a))]).astype(np.float32)
  if len(ids) <= length:
    return ids, mask, "ok"
  if overlong == "drop":
    return None, None, "dropped"
  return ids[:length], mask[:length], "truncated"


def rows(tokenizer, records, length: int, overlong: str = "truncate", name: str = "preference data") -> tuple:
  """Records (a random-access sequence of pair dicts) -> (rows, counts {"pairs", "truncated", "dropped"}, the
  index of each row's record)."""
  if overlong not in sft_data.OVERLONG:
    raise UserError(f"objective.overlong={overlong!r} must be one of {', '.join(sft_data.OVERLONG)}")
  kept, counts = [], {"pairs": 0, "truncated": 0, "dropped": 0}
  for i in range(len(records)):
    rec = records[i]
    where = rec.get("where") or f"{name} pair {i}"
    sides = [side_ids(tokenizer, rec["prompt"], rec[s], length, overlong, where) for s in SIDES]
    status = {st for _, _, st in sides}
    counts["pairs"] += 1
    if "dropped" in status or "truncated" in status:
      counts["dropped" if "dropped" in status else "truncated"] += 1
    if "dropped" not in status:
      kept.append(([(ids, mask) for ids, mask, _ in sides], float(rec.get("margin", 0.0)), i))
  if not kept:
    raise UserError(f"{name} is empty" + (f" after dropping {counts['dropped']} pairs longer than "
                                          f"objective.max_tokens={length}" if counts["dropped"] else ""))
  out = _fill([sides for sides, _, _ in kept], length, tokenizer.pad_id)
  out["margin"] = np.asarray([m for _, m, _ in kept], np.float32)
  return out, counts, np.asarray([i for _, _, i in kept], np.int64)


def answer_rows(tokenizer, prompts: list, answers: list, length: int) -> dict:
  """Rows [n, 1, length] of single answers (what a reward model scores), long answers truncated."""
  return _fill([[side_ids(tokenizer, p, a, length, "truncate", f"prompt {p[:40]!r}")[:2]] for p, a in
                zip(prompts, answers)], length, tokenizer.pad_id)


def _fill(groups: list, length: int, pad_id: int) -> dict:
  """[[(ids, mask), ...] per row group] -> right-padded FIELDS [groups, k, length] and weight 1."""
  k = len(groups[0])
  out = {f: np.zeros((len(groups), k, length), np.float32 if f == "mask" else np.int32) for f in FIELDS}
  out["tokens"][:] = pad_id
  for i, group in enumerate(groups):
    for j, (ids, mask) in enumerate(group):
      n = len(ids)
      out["tokens"][i, j, :n], out["mask"][i, j, :n] = ids, mask
      out["positions"][i, j, :n], out["segment_ids"][i, j, :n] = np.arange(n), 1
  out["weight"] = np.ones(len(groups), np.float32)
  return out


def shapes(pairs: int, length: int, **extra) -> dict:
  """The rows as ShapeDtypeStructs (global shapes) for compiling without data; `extra`: name -> trailing shape."""
  import jax
  import jax.numpy as jnp
  out = {k: jax.ShapeDtypeStruct((pairs, 2, length), jnp.float32 if k == "mask" else jnp.int32) for k in FIELDS}
  out.update(margin=jax.ShapeDtypeStruct((pairs,), jnp.float32), weight=jax.ShapeDtypeStruct((pairs,), jnp.float32))
  out.update({k: jax.ShapeDtypeStruct((pairs, *shape), jnp.float32) for k, shape in extra.items()})
  return out


# ---- the options both preference objectives share (reward_model, dpo) -----------------------------------------

@dataclasses.dataclass(frozen=True)
class PairOptions(options.Group):
  """Where pairs come from: JSONL files, or a simulated annotator judging two answers the starting model samples
  to each of a task's prompts (lm/simulated_annotator.py; written as JSONL and read back the same way)."""
  train_files: str = option("", doc="JSONL pairs: a .jsonl file, a directory of them, or a glob")
  eval_files: str = option("", doc="held-out JSONL pairs for pairwise accuracy at every eval")
  task: str = option("", doc="instead of files: simulated pairs on lm/tasks/<task>.py prompts")
  task_options: dict = option({}, doc="the task's make(**options)")
  pairs: int = option(2048, min=1, doc="simulated training pairs (train-split prompts)")
  eval_pairs: int = option(256, min=0, doc="simulated held-out pairs (test-split prompts)")
  sample_temperature: float = option(1.0, above=0.0, doc="temperature of the two sampled answers")
  max_new_tokens: int = option(8, min=1, doc="answer budget when sampling (prompt + this must fit model.max_len)")
  noise: float = option(0.0, min=0.0, doc="the simulated annotator's Bradley-Terry temperature (0: noise-free)")
  style_weight: float = option(0.02, min=0.0, doc="simulated utility lost per answer character (a style "
                                                  "preference for short answers the task's checker ignores)")
  max_tokens: int = option(0, min=0, doc="tokens per prompt + answer row (0: model.max_len)")
  overlong: str = option("truncate", choices=sft_data.OVERLONG, doc="answers that do not fit max_tokens")

  def check(self, config) -> list:
    problems = []
    if not self.task and not self.train_files:
      problems.append("objective.train_files or objective.task (simulated pairs) must name the preference data")
    if self.max_tokens > config.model.max_len:
      problems.append(f"objective.max_tokens={self.max_tokens} exceeds model.max_len={config.model.max_len}")
    return problems

  def length(self, config) -> int:
    return self.max_tokens or config.model.max_len


class Pairs:
  """An objective's train and eval rows, prepared once from the run's starting params (`prepare`, the objective's
  on_start: simulated pairs are sampled from them). `extra(rows, params)` may add per-pair arrays computed with
  those params (DPO's reference log-probs). For simulated pairs, `eval_utility` [N, 2] is the hidden utility of
  each held-out answer."""

  def __init__(self, o: PairOptions, setup, extra=None):
    self.o, self.setup, self.extra = o, setup, extra
    self.train = self.eval_rows = self.eval_utility = None
    self.counts = {}

  def prepare(self, params):
    o, config, tokenizer = self.o, self.setup.config, self.setup.tokenizer
    split_files = {}
    if o.task:
      from lm import simulated_annotator
      split_files = simulated_annotator.pair_files(o, self.setup, params, config.seed)
    else:
      split_files["train"] = jsonl.files(o.train_files)
      if o.eval_files:
        split_files["validation"] = jsonl.files(o.eval_files)
    srcs = source(split_files, sources.data_dir(config.data))
    length = o.length(config)
    train, counts, _ = rows(tokenizer, srcs["train"], length, o.overlong, "preference train data")
    self.counts = {f"pairs_{k}": v for k, v in counts.items()}
    if "validation" in srcs:
      held = srcs["validation"]
      self.eval_rows, counts, index = rows(tokenizer, held, length, o.overlong, "preference eval data")
      self.counts.update({f"eval_pairs_{k}": v for k, v in counts.items()})
      if o.task:
        from lm import simulated_annotator
        from lm import tasks
        annotator = simulated_annotator.Annotator(tasks.get(o.task, **o.task_options), style_weight=o.style_weight)
        u = np.asarray([[annotator.utility(held[i]["prompt"], held[i][s]) for s in SIDES] for i in index],
                       np.float32)
        # how often the (noisy) labels follow the utility's order: the pair accuracy of the true utility itself
        self.counts["eval_label_agreement"] = float((u[:, 0] > u[:, 1])[u[:, 0] != u[:, 1]].mean())
        self.eval_utility = u
    if self.extra is not None:
      train = self.extra(train, params)
      self.eval_rows = self.extra(self.eval_rows, params) if self.eval_rows is not None else None
    self.train = sft_data.PackedBatches(train, config.train.batch_size, config.seed)

  def batches(self, step: int, params=None) -> dict:
    return self.train(step)
