"""Multi-digit addition: "123+456=" -> "579"; with pad=True, fixed width: "023+456=" -> "0479"."""
from lm.tasks import Example, Task


class Addition(Task):
  name = "addition"

  def __init__(self, digits: int = 3, pad: bool = False):
    self.digits, self.pad = int(digits), bool(pad)

  def _answer(self, total: int) -> str:
    # Fixed width puts every digit at the same position in every problem, which a small model with learned
    # absolute positions aligns far faster than numbers of varying length.
    return str(total).zfill(self.digits + 1) if self.pad else str(total)

  def sample(self, rng) -> Example:
    hi = 10 ** self.digits
    a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
    if self.pad:
      return Example(prompt=f"{a:0{self.digits}d}+{b:0{self.digits}d}=", answer=self._answer(a + b))
    return Example(prompt=f"{a}+{b}=", answer=self._answer(a + b))

  def check(self, prompt: str, response: str) -> float:
    try:
      a, b = prompt.rstrip("=").split("+")
      return float(response.strip() == self._answer(int(a) + int(b)))
    except ValueError:
      return 0.0


def make(digits: int = 3, pad: bool = False) -> Task:
  return Addition(digits, pad)
