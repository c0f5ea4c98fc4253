"""Bad input ends with one clear line on stderr and exit status 2, never a traceback or a half-written output."""
import os

import pytest

from tests.conftest import launch
from tests.conftest import one_line_error as _one_line_error


@pytest.mark.parametrize("flag,needles", [
    ("--config.train.stepz=3", ["stepz", "steps"]),
    ("--config.modl.d_model=3", ["modl", "model"]),
    ("--config.train.steps=abc", ["train.steps", "abc"]),
    ("--config.model.n_heads=3", ["model.d_model=32", "n_heads=3"]),
    ("--config.model.norm=batchnorm", ["model.norm", "rmsnorm"]),
    ("--config.data.seq_len=64", ["data.seq_len=64", "max_len=32"]),
    ("--config.mesh.data=3", ["mesh", "devices"]),
    ("--config.objective.name=dpo_typo", ["objective.name", "pretrain"]),
])
def test_bad_config_exits_2_with_one_line(tmp_path, flag, needles):
  r = launch(f"--workdir={tmp_path}", flag)
  _one_line_error(r, *needles)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_config_file(tmp_path):
  r = launch(f"--workdir={tmp_path}", config="configs/does_not_exist.py")
  _one_line_error(r, "does_not_exist.py")


def test_config_file_that_raises(tmp_path):
  bad = tmp_path / "broken_config.py"
  bad.write_text("import no_such_module_here\n")
  r = launch(f"--workdir={tmp_path / 'run'}", config=str(bad), tiny=False)
  _one_line_error(r, "broken_config.py", "ModuleNotFoundError", "no_such_module_here")


def test_workdir_with_another_config_is_refused_with_a_diff(tmp_path, shakespeare):
  ok = launch(f"--workdir={tmp_path}", "--config.train.steps=2", "--config.checkpoint.every=2")
  assert ok.returncode == 0, ok.stderr[-2000:]
  r = launch(f"--workdir={tmp_path}", "--config.train.steps=2", "--config.checkpoint.every=2",
             "--config.train.lr=0.5")
  _one_line_error(r, "train.lr: 0.001 -> 0.5", "--override_config")


def test_missing_text_folder(tmp_path):
  r = launch(f"--workdir={tmp_path / 'run'}", "--config.data.name=text_folder",
             f"--config.data.path={tmp_path / 'nope'}")
  _one_line_error(r, "data.path", "nope")


def test_non_utf8_text_in_a_text_folder(tmp_path):
  folder = tmp_path / "texts"
  folder.mkdir()
  (folder / "good.txt").write_text("hello world\n" * 100)
  (folder / "bad.txt").write_bytes(b"fine start \xff\xfe broken")
  r = launch(f"--workdir={tmp_path / 'run'}", "--config.data.name=text_folder", f"--config.data.path={folder}",
             f"--config.data.tfds_dir={tmp_path / 'tfds'}")
  _one_line_error(r, "bad.txt", "byte 11", "UTF-8")


def test_text_folder_trains(tmp_path):
  folder = tmp_path / "texts"
  folder.mkdir()
  for i in range(3):
    (folder / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * 40 + "\n" * 5)
  r = launch(f"--workdir={tmp_path / 'run'}", "--config.data.name=text_folder", f"--config.data.path={folder}",
             f"--config.data.tfds_dir={tmp_path / 'tfds'}", "--config.train.steps=3")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "bits_per_byte=" in r.stdout


def test_init_from_a_checkpoint_of_another_shape(tmp_path, finished_run):
  r = launch(f"--workdir={tmp_path / 'dst'}", "--config.model.d_model=64", f"--config.checkpoint.init_from={finished_run}")
  _one_line_error(r, "embed/embedding has shape (264, 32) in the checkpoint, (264, 64) here")


def test_eval_mode_scores_any_checkpoint_on_any_task(finished_run):
  import json
  src = finished_run
  r = launch(f"--config.checkpoint={src}", "--config.task=addition", "--config.task_options=digits=2",
             "--config.examples=6", "--config.pass_n=2", "--config.pass_k=(1,2)", "--config.pass_prompts=3",
             config="configs/eval.py", tiny=False)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["task"] == "addition" and out["task_options"] == {"digits": 2}
  for key in ("bits_per_byte", "exact_match", "pass@1", "pass@2", "best_of_2"):
    assert key in out, key
  r = launch(f"--config.checkpoint={src}", "--config.task=additon", config="configs/eval.py", tiny=False)
  _one_line_error(r, "additon", "addition")
