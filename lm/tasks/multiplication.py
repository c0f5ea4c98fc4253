"""Multiplication of small numbers: "12*34=" -> "408"."""
from lm.tasks import Example, Task


class Multiplication(Task):
  name = "multiplication"

  def __init__(self, digits: int = 2):
    self.digits = int(digits)

  def sample(self, rng) -> Example:
    hi = 10 ** self.digits
    a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
    return Example(prompt=f"{a}*{b}=", answer=str(a * b))

  def check(self, prompt: str, response: str) -> float:
    try:
      a, b = prompt.rstrip("=").split("*")
      return float(response.strip() == str(int(a) * int(b)))
    except ValueError:
      return 0.0


def make(digits: int = 2) -> Task:
  return Multiplication(digits)
