"""Multi-digit addition: "123+456=" -> "579"; with pad=True, fixed width: "023+456=" -> "0479".

`width` (pad=True only; default `digits`) zero-pads both operands to `width` characters and the answer to
width + 1, so 3-digit problems can share the 4-digit layout: digits=3, pad=True, width=4 gives
"0023+0456=" -> "00479", the same positions as digits=4, pad=True ("1023+3456=" -> "04479").
"""
from lm.errors import UserError
from lm.tasks import Example, Task


class Addition(Task):
  name = "addition"

  def __init__(self, digits: int = 3, pad: bool = False, width=None):
    self.digits, self.pad = int(digits), bool(pad)
    self.width = self.digits if width is None else int(width)
    if width is not None and not self.pad:
      raise UserError("addition: width needs pad=True (it is the fixed width operands are zero-padded to)")
    if self.width < self.digits:
      raise UserError(f"addition: width ({self.width}) must be at least digits ({self.digits})")

  def _answer(self, total: int) -> str:
    # Fixed width puts every digit at the same position in every problem, which a small model with learned
    # absolute positions aligns far faster than numbers of varying length.
    return str(total).zfill(self.width + 1) if self.pad else str(total)

  def sample(self, rng) -> Example:
    hi = 10 ** self.digits
    a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
    if self.pad:
      return Example(prompt=f"{a:0{self.width}d}+{b:0{self.width}d}=", answer=self._answer(a + b))
    return Example(prompt=f"{a}+{b}=", answer=self._answer(a + b))

  def reference(self, prompt: str):
    """The correct answer to `prompt` in this task's format, or None for a prompt that is not a sum."""
    try:
      a, b = prompt.rstrip("=").split("+")
      return self._answer(int(a) + int(b))
    except ValueError:
      return None

  def check(self, prompt: str, response: str) -> float:
    ref = self.reference(prompt)
    return float(ref is not None and response.strip() == ref)


def make(digits: int = 3, pad: bool = False, width=None) -> Task:
  return Addition(digits, pad, width)
