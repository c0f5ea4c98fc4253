"""Supervised fine-tuning: chat formatting and loss mask, packing, batches, JSONL data, errors, a short run."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import chat
from lm import model as model_lib
from lm import tokenizer as tokenizer_lib
from lm.data import jsonl
from lm.data import sft
from lm.errors import UserError
from lm import losses
from tests.conftest import apply_overrides, launch, tiny_config

TOK = tokenizer_lib.get()
RECORDS = [{"prompt": "12+5=", "answer": "17"}, {"prompt": "what?", "answer": "a longer answer"},
           {"prompt": "x", "answer": ""}, {"prompt": "hello there", "answer": "hi"},
           {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "bc"},
                         {"role": "user", "content": "d"}, {"role": "assistant", "content": "e"}]}]


def examples(seq_len=32):
  return sft.prepare(TOK, RECORDS, seq_len)[0]


def test_mask_covers_exactly_the_answer_and_eos():
  ids, mask = sft.example_ids(TOK, {"prompt": "12+5=", "answer": "17"})
  np.testing.assert_array_equal(ids[mask == 0], chat.prompt_ids(TOK, "12+5="))
  np.testing.assert_array_equal(ids[mask == 1], TOK.encode("17", eos=True))
  assert mask[-3:].tolist() == [1, 1, 1] and mask[:-3].sum() == 0
  # Chat form: every assistant turn and its EOS, nothing else (not even the <assistant> marker).
  ids, mask = sft.example_ids(TOK, RECORDS[-1])
  assert ids[mask == 1].tolist() == [ord("b"), ord("c"), TOK.eos_id, ord("e"), TOK.eos_id]
  # In packed rows the weighted targets of each segment are that example's answer and EOS.
  rows = sft.pack(examples(), 32)
  answers = []
  for r in range(len(rows["inputs"])):
    for s in range(1, rows["segment_ids"][r].max() + 1):
      sel = (rows["segment_ids"][r] == s) & (rows["weights"][r] > 0)
      answers.append(rows["targets"][r][sel].tolist())
  want = [TOK.encode(r["answer"], eos=True).tolist() for r in RECORDS[:-1]] + [[98, 99, TOK.eos_id, 101, TOK.eos_id]]
  assert sorted(answers) == sorted(want)


def test_packing_keeps_examples_whole_with_their_own_positions():
  exs = examples()
  rows = sft.pack(exs, 32)
  assert len(rows["inputs"]) < len(exs)  # some rows hold more than one example
  found = []
  for r in range(len(rows["inputs"])):
    seg, pos = rows["segment_ids"][r], rows["positions"][r]
    for s in range(1, seg.max() + 1):
      idx = np.nonzero(seg == s)[0]
      assert (np.diff(idx) == 1).all() and pos[idx].tolist() == list(range(len(idx)))
      found.append(rows["inputs"][r][idx].tolist() + [int(rows["targets"][r][idx[-1]])])
    assert (rows["weights"][r][seg == 0] == 0).all()
  assert sorted(found) == sorted(ids.tolist() for ids, _ in exs)


def test_packed_loss_equals_token_weighted_sum_over_unpacked_examples():
  cfg = tiny_config()
  model = model_lib.build(cfg.model)
  import flax.linen as nn
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  exs = examples()
  packed = sft.pack(exs, 32)
  loss, metrics = jax.jit(losses.token_loss_fn(model))(params, packed, None)
  weighted_nll = jax.jit(lambda p, row: (losses.token_nll(losses.apply_lm(model, p, row), row["targets"])[0]
                                          * row["weights"]).sum())
  nll_sum, tokens = 0.0, 0.0
  for ex in exs:  # each example alone in its own row
    row = sft.pack([ex], 32)
    nll_sum += float(weighted_nll(params, row))
    tokens += float(row["weights"].sum())
  assert float(metrics["tokens"]) == tokens
  np.testing.assert_allclose(float(loss), nll_sum / tokens, rtol=1e-5)


def test_batches_are_a_pure_function_of_the_step_and_cover_each_epoch():
  exs = [sft.example_ids(TOK, {"prompt": str(i), "answer": "y" * (i % 20)}) for i in range(40)]
  rows = sft.pack(exs, 32)
  n = len(rows["inputs"])
  a, b = sft.PackedBatches(rows, 4, seed=5), sft.PackedBatches(rows, 4, seed=5)
  for step in (0, 3, 17, 1000):
    for k in rows:
      np.testing.assert_array_equal(a(step)[k], b(step)[k])
  epoch = np.concatenate([a(s)["inputs"] for s in range(n // 4)])
  assert len({r.tobytes() for r in epoch}) == len({r.tobytes() for r in rows["inputs"][:4 * (n // 4)]}) or n % 4
  first, second = [np.concatenate([a(s)["inputs"] for s in range(e * n, (e + 1) * n)]) for e in (0, 1)]
  assert not np.array_equal(first, second)  # rows reshuffled across epochs
  assert not np.array_equal(a(0)["inputs"], sft.PackedBatches(rows, 4, seed=6)(0)["inputs"])


def test_overlong_examples_are_truncated_or_dropped_and_counted():
  recs = [{"prompt": "p", "answer": "a" * 40}, {"prompt": "q", "answer": "b"}]
  kept, counts = sft.prepare(TOK, recs, 16, "truncate")
  assert counts == {"examples": 2, "truncated": 1, "dropped": 0}
  assert len(kept[0][0]) == 17 and kept[0][1][-1] == 1
  kept, counts = sft.prepare(TOK, recs, 16, "drop")
  assert counts == {"examples": 2, "truncated": 0, "dropped": 1} and len(kept) == 1
  with pytest.raises(UserError, match="empty after dropping 1"):
    sft.prepare(TOK, recs[:1], 16, "drop")


@pytest.mark.parametrize("overlong", sft.OVERLONG)
def test_prompt_longer_than_the_context_is_one_clear_error(overlong):
  with pytest.raises(UserError, match=r"example 1: the prompt is 23 tokens .* longer than the context"):
    sft.prepare(TOK, [{"prompt": "ok", "answer": "1"}, {"prompt": "p" * 20, "answer": "a"}], 16, overlong)


def write(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


def test_jsonl_source_round_trips_both_forms(tmp_path):
  path = write(tmp_path / "d.jsonl", [json.dumps(r) for r in RECORDS] + [""])
  src = jsonl.source({"train": jsonl.files(str(tmp_path))}, str(tmp_path / "tfds"))["train"]
  got = sorted((jsonl.record(src[i]) for i in range(len(src))), key=lambda r: r["where"])
  assert [r["where"] for r in got] == [f"{path}:{i}" for i in range(1, 6)]
  for rec, want in zip(got, RECORDS):
    assert sft.example_ids(TOK, rec)[0].tolist() == sft.example_ids(TOK, want)[0].tolist()


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a", "answer": ', "not valid JSON"),
    ('{"prompt": "a"}', "answer missing"),
    ('[1, 2]', "expected a JSON object"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', r"messages\[0\]"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
])
def test_malformed_jsonl_line_names_file_and_line(tmp_path, line, message):
  path = write(tmp_path / "bad.jsonl", ['{"prompt": "a", "answer": "b"}', "", line])
  with pytest.raises(UserError, match=rf"{path}:3: .*{message}"):
    jsonl.source({"train": jsonl.files(path)}, str(tmp_path / "tfds"))


def test_empty_jsonl_dataset_is_one_clear_error(tmp_path):
  path = write(tmp_path / "empty.jsonl", ["", "  "])
  with pytest.raises(UserError, match="holds no examples"):
    jsonl.source({"train": jsonl.files(path)}, str(tmp_path / "tfds"))
  with pytest.raises(UserError, match="matches no JSONL file"):
    jsonl.files(str(tmp_path / "nothing*.jsonl"))


def sft_config(tmp_path, **overrides):
  from configs import sft_jsonl
  c = sft_jsonl.get_config()
  small = tiny_config()
  c.model, c.data, c.eval, c.checkpoint = small.model, small.data, small.eval, small.checkpoint
  c.train.update(steps=4, batch_size=8, warmup_steps=1, log_every=2, progress=False)
  c.eval.every = 4
  c.checkpoint.init_from = ""
  c.objective.update(task="addition", train_examples=64, eval_examples=8, max_new_tokens=5, pass_n=2,
                     pass_k=(1, 2), pass_prompts=4, gen_batch=8)
  c.objective.task_options.digits = 1
  return apply_overrides(c, overrides)


def test_sft_run_reports_task_metrics_and_fine_tunes_a_checkpoint(tmp_path, shakespeare):
  from lm import metrics
  from lm import train
  first = str(tmp_path / "first")
  result = train.run(sft_config(tmp_path), first)
  for key in ("bits_per_byte", "exact_match", "pass@1", "pass@2", "best_of_2", "sft_truncated", "sft_dropped"):
    assert key in result, key
  assert 0.0 <= result["exact_match"] <= 1.0 and result["sft_examples"] == 64
  assert [e["step"] for e in metrics.read(first, "eval")] == [4]
  # Fine-tune from that run's params; a checkpoint of another shape is one clear error before any training.
  result = train.run(sft_config(tmp_path, **{"checkpoint.init_from": first, "train.steps": 2, "eval.every": 2}),
                     str(tmp_path / "second"))
  assert "exact_match" in result
  with pytest.raises(UserError, match="has shape .* in the checkpoint, .* here"):
    train.run(sft_config(tmp_path, **{"checkpoint.init_from": first, "model.d_model": 64}), str(tmp_path / "third"))


def test_sft_run_on_jsonl_files_reports_held_out_answer_loss(tmp_path, shakespeare):
  from lm import train
  lines = [json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) for i in range(30)]
  train_path = write(tmp_path / "train.jsonl", lines[:20])
  eval_path = write(tmp_path / "eval.jsonl", lines[20:] + [json.dumps(RECORDS[-1])])
  config = sft_config(tmp_path, **{"objective.task": "", "objective.train_files": train_path,
                                   "objective.eval_files": eval_path, "train.steps": 2, "eval.every": 2})
  result = train.run(config, str(tmp_path / "run"))
  assert result["sft_examples"] == 20 and result["sft_eval_examples"] == 11
  assert result["sft_loss"] > 0 and result["sft_eval_tokens"] == sum(len(str(2 * i)) + 1 for i in range(20, 30)) + 5
  assert "exact_match" not in result


def test_launch_reports_a_malformed_line_as_one_stderr_line(tmp_path):
  path = write(tmp_path / "bad.jsonl", ['{"prompt": "a", "answer": "b"}', "{oops"])
  proc = launch(f"--workdir={tmp_path / 'run'}", f"--config.objective.train_files={path}",
                config="configs/sft_jsonl.py", tiny=False, env={"LM_TFDS_DIR": str(tmp_path / "tfds")}, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: {path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"]
  assert "Traceback" not in proc.stderr
