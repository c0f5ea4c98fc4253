"""Evaluation shared by every stage. Held-out bits per byte here; task metrics live beside it."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lm import options
from lm import sharding
from lm.data import lm_batches
from lm.losses import apply_lm, token_nll
from lm.options import option


def _nll_sums(model, params, batch, bytes_per_token):
  nll, _ = token_nll(apply_lm(model, params, batch), batch["targets"])
  w = batch["weights"]
  return {"nll": (nll * w).sum(), "tokens": w.sum(), "bytes": (bytes_per_token[batch["targets"]] * w).sum()}


_jit_nll_sums = jax.jit(_nll_sums, static_argnames=("model",))  # not a decorator: mutmut skips decorated functions


def _bytes_per_token(tokenizer):
  return jnp.asarray(tokenizer.bytes_per_token(), jnp.float32)


def compile_bits_per_byte(model, abstract_params, rows: int, seq_len: int, tokenizer, mesh):
  """Compile bits_per_byte's batch function for [rows, seq_len] batches now; its later calls reuse it."""
  batch = sharding.abstract_batch(lm_batches.shapes(rows, seq_len), mesh)
  _jit_nll_sums.lower(model, abstract_params, batch, _bytes_per_token(tokenizer)).compile()


def bits_per_byte(model, params, batches, tokenizer, mesh) -> dict:
  """loss (nats/token) and bits_per_byte over an iterable of token batches, summed exactly (no sampling)."""
  bpt = _bytes_per_token(tokenizer)
  # Sums stay on device until the end, so the host never waits on a batch it has just dispatched.
  total = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
  for local in batches:
    total = jax.tree.map(jnp.add, total, _jit_nll_sums(model, params, sharding.global_batch(local, mesh), bpt))
  total = {k: float(v) for k, v in total.items()}
  return {"loss": total["nll"] / max(total["tokens"], 1.0),
          "bits_per_byte": total["nll"] / math.log(2) / max(total["bytes"], 1.0),
          "eval_tokens": int(total["tokens"])}


# ---- Task metrics: greedy exact match, pass@k, best-of-n (generation through lm/sampling.generate) ----


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

  The product form avoids the huge binomials: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i). When fewer than
  k samples are wrong (n - c < k) the product holds the factor i = k, exactly 0, so pass@k is exactly 1.
  """
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def generate_responses(model, params, tokenizer, prompts, rng, *, max_new_tokens: int, n: int = 1,
                       temperature: float = 0.0, batch_size: int = 256, system: str = "") -> list:
  """n responses to each prompt (chat template), as [prompt][sample] dicts: text, logprob, tokens, truncated."""
  from lm import chat
  from lm import sampling
  ids = [chat.prompt_ids(tokenizer, p, system or None) for p in prompts]
  flat = [x for x in ids for _ in range(n)]
  size = min(batch_size, len(flat))
  group = n if size % n == 0 else 1  # chunks hold whole groups of one prompt's n samples: prefill each once
  out = []
  for i, start in enumerate(range(0, len(flat), size)):
    chunk = flat[start:start + size]
    real = len(chunk)
    # Pad the last chunk to the same number of rows so every chunk reuses one compilation.
    res = sampling.generate(model, params, chunk + [chunk[0]] * (size - real), jax.random.fold_in(rng, i),
                            max_new_tokens, temperature=temperature, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                            group=group)
    toks, mask, logp, trunc = (np.asarray(jax.device_get(res[k])) for k in ("tokens", "mask", "logprobs", "truncated"))
    for j in range(real):
      out.append({"text": chat.response_text(tokenizer, toks[j], mask[j]), "logprob": float(logp[j].sum()),
                  "tokens": int(mask[j].sum()), "truncated": bool(trunc[j])})
  return [out[i * n:(i + 1) * n] for i in range(len(prompts))]


def mean_logprob(prompt: str, sample: dict) -> float:
  """Scorer: the policy's own mean log-probability per generated token (no checker needed)."""
  return sample["logprob"] / max(sample["tokens"], 1)


def best_of_n(task, prompts, samples, scorer) -> float:
  """Mean checker score of the sample `scorer(prompt, sample)` ranks highest among each prompt's n (first on ties)."""
  scores = []
  for p, group in zip(prompts, samples):
    best = max(range(len(group)), key=lambda i: (scorer(p, group[i]), -i))
    scores.append(task.check(p, group[best]["text"]))
  return float(np.mean(scores))


def task_metrics(model, params, tokenizer, task, examples, rng, *, max_new_tokens: int, ks=(1,), n: int = 0,
                 pass_prompts: int = 0, temperature: float = 1.0, batch_size: int = 256, system: str = "",
                 scorer=mean_logprob) -> dict:
  """Greedy exact match over `examples`; with n > 0, pass@k (k in ks) and best-of-n by `scorer` from n samples
  at `temperature` for each of the first `pass_prompts` examples (0: all)."""
  prompts = [ex.prompt for ex in examples]
  greedy = generate_responses(model, params, tokenizer, prompts, rng, max_new_tokens=max_new_tokens, n=1,
                              temperature=0.0, batch_size=batch_size, system=system)
  out = {"exact_match": float(np.mean([task.check(p, g[0]["text"]) >= 1.0 for p, g in zip(prompts, greedy)])),
         "truncated_responses": float(np.mean([g[0]["truncated"] for g in greedy]))}
  if n:
    sub = prompts[:pass_prompts or None]
    samples = generate_responses(model, params, tokenizer, sub, jax.random.fold_in(rng, 1), n=n,
                                 max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                                 system=system)
    correct = [sum(task.check(p, s["text"]) >= 1.0 for s in group) for p, group in zip(sub, samples)]
    for k in ks:
      out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for c in correct]))
    out[f"best_of_{n}"] = best_of_n(task, sub, samples, scorer)
  return out


@dataclasses.dataclass(frozen=True)
class TaskEval(options.Group):
  """The held-out task options an RL-style objective (policy gradient, ES) shares; its Options inherit them."""
  eval_examples: int = option(500, min=1, doc="test problems for greedy exact match")
  pass_n: int = option(16, min=0, doc="samples per problem for pass@k and best-of-n (0: skip them)")
  pass_k: tuple = option((1, 16))
  pass_prompts: int = option(100, min=0, doc="the first this many test problems get pass_n samples each")
  eval_temperature: float = option(1.0, min=0.0)

  def check(self, config) -> list:
    if self.pass_n and max(self.pass_k, default=0) > self.pass_n:
      return [f"objective.pass_k={self.pass_k} has k > objective.pass_n={self.pass_n} samples per prompt"]
    return []

  def metrics(self, model, params, tokenizer, task, examples, seed: int, max_new_tokens: int) -> dict:
    """task_metrics with one fixed sampling key (seed + 99), so evals at different steps differ by the params."""
    return task_metrics(model, params, tokenizer, task, examples, jax.random.PRNGKey(seed + 99),
                        max_new_tokens=max_new_tokens, ks=self.pass_k, n=self.pass_n,
                        pass_prompts=self.pass_prompts, temperature=self.eval_temperature)
