"""Multi-digit addition: "123+456=" -> "579"; with pad=True, fixed width: "023+456=" -> "0479".

`width` (pad=True only; default `digits`) zero-pads both operands to `width` characters and the answer to
width + 1, so 3-digit problems can share the 4-digit layout: digits=3, pad=True, width=4 gives
"0023+0456=" -> "00479", the same positions as digits=4, pad=True ("1023+3456=" -> "04479").

`wide_frac` (pad=True only; default 0.0) is the probability that a sampled problem uses `width`-digit operands
(up to 10**width - 1) instead of `digits`-digit ones: digits=3, width=4, wide_frac=0.05 mixes a few 4-digit
problems into 3-digit training, so the thousands digits are not new to the model. The train/test split (by
prompt hash) is unchanged.

`reverse` writes the answer least-significant digit first: "0023+0456=" -> "97400". Generated left to right, each
digit then depends on the operands' digits at its place and the carry from the digit just written, where the
usual order needs every carry before the first digit (Lee et al. 2023, "Teaching Arithmetic to Small
Transformers"). Prompts, splits and problems are the same either way.
"""
from lm.errors import UserError
from lm.tasks import Example, Task


class Addition(Task):
  name = "addition"

  def __init__(self, digits: int = 3, pad: bool = False, width=None, wide_frac: float = 0.0, reverse: bool = False):
    self.digits, self.pad, self.reverse = int(digits), bool(pad), bool(reverse)
    self.wide_frac = float(wide_frac)
    if not 0.0 <= self.wide_frac <= 1.0:
      raise UserError(f"addition: wide_frac ({self.wide_frac}) must be in [0, 1]")
    if self.wide_frac > 0 and not self.pad:
      raise UserError("addition: wide_frac needs pad=True (wide problems use the fixed width)")
    self.width = self.digits if width is None else int(width)
    if width is not None and not self.pad:
      raise UserError("addition: width needs pad=True (it is the fixed width operands are zero-padded to)")
    if self.width < self.digits:
      raise UserError(f"addition: width ({self.width}) must be at least digits ({self.digits})")

  def _answer(self, total: int) -> str:
    # Fixed width puts every digit at the same position in every problem, which a small model with learned
    # absolute positions aligns far faster than numbers of varying length.
    text = str(total).zfill(self.width + 1) if self.pad else str(total)
    return text[::-1] if self.reverse else text

  def sample(self, rng) -> Example:
    hi = 10 ** self.digits
    # Drawn only when wide_frac > 0, so the default keeps the exact random stream (and problems) it had.
    if self.wide_frac > 0 and rng.random() < self.wide_frac:
      hi = 10 ** self.width
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


def make(digits: int = 3, pad: bool = False, width=None, wide_frac: float = 0.0, reverse: bool = False) -> Task:
  return Addition(digits, pad, width, wide_frac, reverse)
