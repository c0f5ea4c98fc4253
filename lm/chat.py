"""The prompt template every stage shares: BOS <user> prompt <assistant> answer EOS.

SFT trains on it (loss on `answer EOS` only), policy gradient samples after `prompt_ids`, evaluation scores
what comes after it, so the three always agree on the format.
"""
import numpy as np


def prompt_ids(tokenizer, prompt: str | bytes, system: str | None = None) -> np.ndarray:
  parts = [[tokenizer.bos_id]]
  if system:
    parts += [[tokenizer.role_ids["system"]], tokenizer.encode(system)]
  parts += [[tokenizer.role_ids["user"]], tokenizer.encode(prompt), [tokenizer.role_ids["assistant"]]]
  return np.concatenate([np.asarray(p, np.int32) for p in parts])


def answer_ids(tokenizer, answer: str | bytes) -> np.ndarray:
  return tokenizer.encode(answer, eos=True)


def messages_ids(tokenizer, messages: list) -> tuple:
  """Chat form [{'role', 'content'}, ...] -> (ids, loss mask): the loss covers assistant turns and their EOS."""
  ids, mask = [tokenizer.bos_id], [0]
  for m in messages:
    role, content = m["role"], m["content"]
    body = tokenizer.encode(content)
    ids += [tokenizer.role_ids[role]] + body.tolist()
    mask += [0] + [int(role == "assistant")] * len(body)
    if role == "assistant":
      ids.append(tokenizer.eos_id)
      mask.append(1)
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def response_text(tokenizer, tokens, mask=None) -> str:
  """Decoded response up to (not including) EOS."""
  tokens = np.asarray(tokens)
  if mask is not None:
    tokens = tokens[np.asarray(mask, bool)]
  eos = np.nonzero(tokens == tokenizer.eos_id)[0]
  if len(eos):
    tokens = tokens[:eos[0]]
  return tokenizer.decode(tokens)
