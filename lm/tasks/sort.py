"""Sorting a short list of numbers: "sort:5,12,3=" -> "3,5,12"."""
from lm.tasks import Example, Task

PREFIX = "sort:"


def _ints(text: str) -> list:
  return [int(x) for x in text.split(",")]


class Sort(Task):
  name = "sort"

  def __init__(self, min_len: int = 3, max_len: int = 6, max_value: int = 99):
    self.min_len, self.max_len, self.max_value = int(min_len), int(max_len), int(max_value)

  def sample(self, rng) -> Example:
    n = int(rng.integers(self.min_len, self.max_len + 1))
    xs = [int(x) for x in rng.integers(0, self.max_value + 1, size=n)]
    return Example(prompt=f"{PREFIX}{','.join(map(str, xs))}=", answer=",".join(map(str, sorted(xs))))

  def check(self, prompt: str, response: str) -> float:
    try:
      want = sorted(_ints(prompt[len(PREFIX):].rstrip("=")))
      # Spaces are forgiven; anything else (leading zeros, a missing or extra number) is wrong.
      return float(response.strip().replace(" ", "") == ",".join(map(str, want)))
    except ValueError:
      return 0.0


def make(min_len: int = 3, max_len: int = 6, max_value: int = 99) -> Task:
  return Sort(min_len, max_len, max_value)
