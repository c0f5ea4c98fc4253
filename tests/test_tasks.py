"""Verifiable tasks: deterministic generators, disjoint train/test splits, checkers."""
import pytest

from lm import tasks
from lm.errors import UserError

TASKS = ["addition", "multiplication", "reverse", "sort"]
VARIANTS = [(name, {}) for name in TASKS] + [("addition", {"pad": True}), ("addition", {"pad": True, "width": 4}),
                                             ("addition", {"pad": True, "width": 4, "reverse": True})]
IDS = [name + "".join(f"-{k}" for k in opts) for name, opts in VARIANTS]


def corrupt(answer: str) -> list:
  last = "0" if answer[-1] != "0" else "1"
  return [answer[:-1] + last, answer + "1", answer[1:] if len(answer) > 1 else "x", "", answer + answer]


def test_registry_lists_every_task_file():
  assert set(TASKS) <= set(tasks.names())
  with pytest.raises(UserError, match="unknown"):
    tasks.get("no_such_task")


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_generators_are_deterministic(name, options):
  task = tasks.get(name, **options)
  for split in ("train", "test"):
    assert task.examples(split, 50, seed=3) == tasks.get(name, **options).examples(split, 50, seed=3)
  assert task.examples("train", 50, seed=3) != task.examples("train", 50, seed=4)


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_train_and_test_are_disjoint(name, options):
  task = tasks.get(name, **options)
  train = {ex.prompt for seed in range(3) for ex in task.examples("train", 1000, seed=seed)}
  test = {ex.prompt for seed in range(3) for ex in task.examples("test", 200, seed=seed)}
  assert train and test and not train & test
  # The split is a function of the problem, so no seed or count can move a problem across it.
  assert all(task.split_of(tasks.Example(p, "")) == "test" for p in test)


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_checker_accepts_reference_and_rejects_corruptions(name, options):
  task = tasks.get(name, **options)
  for ex in task.examples("test", 30, seed=0):
    assert task.check(ex.prompt, ex.answer) == 1.0
    assert task.check(ex.prompt, f" {ex.answer}\n") == 1.0
    for bad in corrupt(ex.answer):
      if bad != ex.answer:
        assert task.check(ex.prompt, bad) == 0.0, (ex, bad)


def test_addition_digits_are_configurable():
  exs = tasks.get("addition", digits=5).examples("train", 200, seed=0)
  operands = [int(x) for ex in exs for x in ex.prompt.rstrip("=").split("+")]
  assert max(operands) < 10**5 and max(operands) >= 10**4


def test_padded_addition_is_fixed_width_and_strict():
  task = tasks.get("addition", digits=3, pad=True)
  assert all(len(ex.prompt) == 8 and len(ex.answer) == 4 for ex in task.examples("train", 100, seed=0))
  assert task.check("023+456=", "0479") == 1.0 and task.check("023+456=", "479") == 0.0
  assert tasks.get("addition").check("23+456=", "479") == 1.0 and tasks.get("addition").check("23+456=", "0479") == 0.0


def test_padded_addition_width_shares_the_wider_layout():
  task = tasks.get("addition", digits=3, pad=True, width=4)
  assert all(len(ex.prompt) == 10 and len(ex.answer) == 5 for ex in task.examples("train", 100, seed=0))
  assert task.check("0023+0456=", "00479") == 1.0 and task.check("0023+0456=", "0479") == 0.0
  assert tasks.get("addition", digits=4, pad=True).check("0023+0456=", "00479") == 1.0
  for bad in ({"width": 4}, {"pad": True, "width": 2}):
    with pytest.raises(UserError, match="width"):
      tasks.get("addition", digits=3, **bad)


def test_addition_wide_frac_mixes_in_width_digit_problems():
  task = tasks.get("addition", digits=3, pad=True, width=4, wide_frac=0.5)
  exs = task.examples("train", 200, seed=0)
  assert all(len(ex.prompt) == 10 and len(ex.answer) == 5 and task.check(ex.prompt, ex.answer) == 1.0 for ex in exs)
  wide = sum(ex.prompt[0] != "0" or ex.prompt[5] != "0" for ex in exs)
  assert 50 < wide < 150  # P(a wide problem has a thousands digit) = 1 - 0.1**2
  assert tasks.get("addition", digits=3, pad=True, width=4, wide_frac=0.0).examples("train", 50, seed=0) == \
      tasks.get("addition", digits=3, pad=True, width=4).examples("train", 50, seed=0)
  with pytest.raises(UserError, match="wide_frac"):
    tasks.get("addition", digits=3, wide_frac=0.1)


def test_reference_answers_are_right():
  assert tasks.get("multiplication").check("12*34=", "408") == 1.0
  assert tasks.get("reverse").check("reverse:abc=", "cba") == 1.0
  assert tasks.get("sort").check("sort:5,12,3=", "3,5,12") == 1.0
  assert tasks.get("sort").check("sort:5,12,3=", "3,5,012") == 0.0
  assert tasks.get("addition").check("garbage", "1") == 0.0


def test_reversed_addition_writes_the_least_significant_digit_first():
  task = tasks.get("addition", digits=3, pad=True, width=4, reverse=True)
  assert task.check("0023+0456=", "97400") == 1.0 and task.check("0023+0456=", "00479") == 0.0
  assert task.reference("0999+0001=") == "00010"
  plain = tasks.get("addition", digits=3, pad=True, width=4)
  assert [e.prompt for e in task.examples("test", 20)] == [e.prompt for e in plain.examples("test", 20)]
  assert all(a.answer == b.answer[::-1] for a, b in zip(task.examples("train", 50), plain.examples("train", 50)))
