"""TFDS sources: catalog datasets (tiny_shakespeare, ...) and a builder for a local folder of text files.

Datasets are prepared once as array_record and read with `tfds.data_source` (random access, no TensorFlow at
train time). Preparation runs on process 0 while the others wait. Offline preparation: put the raw files in a
manual dir (`data.manual_dir` or $LM_MANUAL_DIR; for tiny_shakespeare the folder holding input.txt).
"""
import contextlib
import dataclasses
import glob
import hashlib
import os

import tensorflow_datasets as tfds

from lm import options
from lm.errors import UserError
from lm.options import option


@dataclasses.dataclass(frozen=True)
class DataConfig(options.Group):
  name: str = option("tiny_shakespeare", doc="a TFDS catalog name, or 'text_folder' (then data.path)")
  path: str = option("", doc="text_folder: a directory of *.txt files")
  tfds_dir: str = option("", doc="'': $LM_TFDS_DIR or ~/tensorflow_datasets")
  manual_dir: str = option("", doc="'': $LM_MANUAL_DIR; the folder holding raw files for offline preparation")
  seq_len: int = option(64, min=1)
  train_split: str = option("train")
  eval_split: str = option("validation")

  def check(self, config) -> list:
    if self.name == "text_folder" and not self.path:
      return ["data.name='text_folder' needs data.path (a directory of *.txt files); without it nothing says "
              "which files to train on"]
    return []


def data_dir(data_cfg) -> str:
  return os.path.expanduser(data_cfg.get("tfds_dir") or os.environ.get("LM_TFDS_DIR")
                            or "~/tensorflow_datasets")


def manual_dir(data_cfg) -> str:
  return data_cfg.get("manual_dir") or os.environ.get("LM_MANUAL_DIR", "")


def sync(tag: str):
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(tag)


def prepared(builder, prepare_fn):
  """Run prepare_fn on process 0 if the builder has no data yet; every process returns after it is ready."""
  import jax
  if jax.process_index() == 0 and not _is_prepared(builder):
    prepare_fn()
  sync(f"tfds prepare {builder.name}")


def _is_prepared(builder) -> bool:
  try:
    return builder.is_prepared()
  except Exception:  # pylint: disable=broad-except
    return False


def catalog_source(data_cfg, split: str):
  """A TFDS catalog dataset (e.g. tiny_shakespeare), split as TFDS defines it."""
  name = data_cfg.name
  ddir = data_dir(data_cfg)
  try:
    builder = tfds.builder(name, data_dir=ddir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"data.name={name!r} is not a TFDS dataset; use a catalog name or 'text_folder'") from None
  mdir = manual_dir(data_cfg)

  def prepare():
    if mdir and not os.path.isdir(mdir):
      raise UserError(f"data.manual_dir={mdir!r} does not exist; point it (or $LM_MANUAL_DIR) at the raw files")
    config = tfds.download.DownloadConfig(manual_dir=mdir) if mdir else None
    try:
      with _few_download_retries():
        builder.download_and_prepare(download_config=config)
    except Exception as e:  # pylint: disable=broad-except
      reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
      if not mdir and _is_connection_error(e):
        raise UserError(f"could not download TFDS dataset {name!r} ({reason}); offline, put its raw files in a "
                        "folder and set data.manual_dir or $LM_MANUAL_DIR to it (for tiny_shakespeare: the folder "
                        "holding input.txt; `make train` sets it to ../shared/data/tinyshakespeare)") from None
      raise UserError(f"could not prepare TFDS dataset {name!r} in {ddir} (manual dir {mdir or 'unset'}): "
                      f"{reason}") from None

  prepared(builder, prepare)
  return data_source(builder, split)


@contextlib.contextmanager
def _few_download_retries():
  """TFDS retries a failed download 10 times with backoff (206 s offline); once is enough to know."""
  from tensorflow_datasets.core.download import downloader
  old, downloader.MAX_RETRIES = downloader.MAX_RETRIES, 1
  try:
    yield
  finally:
    downloader.MAX_RETRIES = old


def _is_connection_error(e: BaseException) -> bool:
  while e is not None:
    if isinstance(e, (ConnectionError, OSError)) or "Connection" in type(e).__name__ or "Resolution" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def data_source(builder, split):
  if split not in builder.info.splits:
    raise UserError(f"dataset {builder.name!r} has no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)


class TextFolder(tfds.core.GeneratorBasedBuilder):
  """Every *.txt file under a folder is one document; each file's last tenth (at a line break) is validation."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, folder: str, **kwargs):
    self._folder = folder
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples("train"), "validation": self._generate_examples("validation")}

  def _generate_examples(self, split):
    for path in text_files(self._folder):
      data = read_text(path)
      cut = _cut(data, 0.9)
      part = data[:cut] if split == "train" else data[cut:]
      if part:
        yield path, {"text": part}


def _cut(data: bytes, frac: float) -> int:
  """Split point near frac: after a line break if one is close, never inside a UTF-8 character."""
  cut = int(len(data) * frac)
  nl = data.rfind(b"\n", int(len(data) * (frac - 0.1)), cut)
  if nl >= 0:
    return nl + 1
  while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:
    cut -= 1
  return cut


def text_files(folder: str) -> list:
  if not os.path.isdir(folder):
    raise UserError(f"data.path={folder!r} is not a directory of text files")
  files = sorted(glob.glob(os.path.join(folder, "**", "*.txt"), recursive=True))
  if not files:
    raise UserError(f"data.path={folder!r} holds no *.txt files")
  return files


def read_text(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"cannot read {path}: {e.strerror}") from None
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: byte {e.start} is not UTF-8 text; convert the file (e.g. iconv -t utf-8) "
                    "or remove it from the folder") from None
  return data


def local_builder(builder_cls, kind: str, files: dict, tfds_dir: str, **kwargs):
  """A TFDS builder of local files ({split or "": [paths]}), prepared once as array_record in
  <tfds_dir>/<kind>/<hash>, the hash of the files' paths, sizes and mtimes, so editing a file re-prepares it."""
  h = hashlib.sha1()
  for split, paths in sorted(files.items()):
    for p in paths:
      st = os.stat(p)
      h.update(f"{split}:{p}:{st.st_size}:{st.st_mtime_ns}".encode())
  builder = builder_cls(data_dir=os.path.join(tfds_dir, kind, h.hexdigest()[:12]), file_format="array_record",
                        **kwargs)
  prepared(builder, builder.download_and_prepare)
  return builder


def text_folder_source(data_cfg, split: str):
  folder = os.path.abspath(data_cfg.path or "")
  builder = local_builder(TextFolder, "text_folder", {"": text_files(folder)}, data_dir(data_cfg), folder=folder)
  return data_source(builder, split)


def source(data_cfg, split: str):
  """Random-access source of {'text': bytes} examples."""
  if data_cfg.name == "text_folder":
    return text_folder_source(data_cfg, split)
  return catalog_source(data_cfg, split)
