"""String reversal: "reverse:hello=" -> "olleh"."""
import string

from lm.tasks import Example, Task

PREFIX = "reverse:"


class Reverse(Task):
  name = "reverse"

  def __init__(self, min_len: int = 3, max_len: int = 8, alphabet: str = string.ascii_lowercase):
    self.min_len, self.max_len, self.alphabet = int(min_len), int(max_len), alphabet

  def sample(self, rng) -> Example:
    n = int(rng.integers(self.min_len, self.max_len + 1))
    s = "".join(self.alphabet[i] for i in rng.integers(0, len(self.alphabet), size=n))
    return Example(prompt=f"{PREFIX}{s}=", answer=s[::-1])

  def check(self, prompt: str, response: str) -> float:
    if not (prompt.startswith(PREFIX) and prompt.endswith("=")):
      return 0.0
    # Only the trailing newline/space a model may emit is forgiven; inner characters must match exactly.
    return float(response.strip() == prompt[len(PREFIX):-1][::-1])


def make(min_len: int = 3, max_len: int = 8, alphabet: str = string.ascii_lowercase) -> Task:
  return Reverse(min_len, max_len, alphabet)
