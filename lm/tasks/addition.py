"""Multi-digit addition: "123+456=" -> "579"."""
from lm.tasks import Example, Task


class Addition(Task):
  name = "addition"

  def __init__(self, digits: int = 3):
    self.digits = int(digits)

  def sample(self, rng) -> Example:
    hi = 10 ** self.digits
    a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
    return Example(prompt=f"{a}+{b}=", answer=str(a + b))

  def check(self, prompt: str, response: str) -> float:
    try:
      a, b = prompt.rstrip("=").split("+")
      return float(response.strip() == str(int(a) + int(b)))
    except ValueError:
      return 0.0


def make(digits: int = 3) -> Task:
  return Addition(digits)
