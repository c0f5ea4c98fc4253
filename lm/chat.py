"""The prompt template every stage shares.

Native (the byte tokenizer and vocabularies with role tokens): BOS <user> prompt <assistant> answer EOS.
A tokenizer with a chat template (an instruct checkpoint's tokenizer_config.json) renders its own, with Jinja as
transformers does; its EOS is the token that ends an assistant turn (`turn_end_id`).

SFT trains on it (loss on the answer and what ends its turn), policy gradient samples after `prompt_ids`,
evaluation scores what comes after it, so the three always agree on the format.
"""
import datetime
import functools

import numpy as np

from lm.errors import UserError

# The native format as a Jinja chat template, written beside exported models so transformers renders the same.
NATIVE_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<' + message['role'] + '>' + message['content'] }}"
                   "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}")


def _template(tokenizer):
  return getattr(tokenizer, "chat_template", None)


@functools.lru_cache(maxsize=8)
def _compiled(source: str):
  import jinja2
  from jinja2 import sandbox

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=["jinja2.ext.loopcontrols"])
  env.globals.update(raise_exception=raise_exception,
                     strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
  return env.from_string(source)


def render(tokenizer, messages: list, add_generation_prompt: bool) -> str:
  """The tokenizer's chat template applied to messages ([{'role', 'content'}, ...])."""
  import jinja2
  try:
    return _compiled(_template(tokenizer)).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                  **tokenizer.special_tokens)
  except jinja2.exceptions.TemplateError as e:
    raise UserError(f"the tokenizer's chat template failed on {[m['role'] for m in messages]}: {e}") from None


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else x


def _messages(prompt, system) -> list:
  user = [{"role": "user", "content": _text(prompt)}]
  return ([{"role": "system", "content": _text(system)}] if system else []) + user


def turn_end_id(tokenizer):
  """The special token the chat template puts right after an assistant message (Qwen's <|im_end|>, Llama 3's
  <|eot_id|>), or None."""
  user = [{"role": "user", "content": "1"}]
  start = render(tokenizer, user, True)
  full = render(tokenizer, user + [{"role": "assistant", "content": "2"}], False)
  if not full.startswith(start + "2"):
    return None
  specials = set(tokenizer._special.values())  # pylint: disable=protected-access
  return next((i for i in tokenizer.encode(full[len(start) + 1:]).tolist() if i in specials), None)


def prompt_ids(tokenizer, prompt: str | bytes, system: str | None = None) -> np.ndarray:
  if _template(tokenizer):
    return tokenizer.encode(render(tokenizer, _messages(prompt, system), True))
  _need_roles(tokenizer)
  parts = [[tokenizer.bos_id]]
  if system:
    parts += [[tokenizer.role_ids["system"]], tokenizer.encode(system)]
  parts += [[tokenizer.role_ids["user"]], tokenizer.encode(prompt), [tokenizer.role_ids["assistant"]]]
  return np.concatenate([np.asarray(p, np.int32) for p in parts])


def answer_ids(tokenizer, answer: str | bytes) -> np.ndarray:
  return tokenizer.encode(answer, eos=True)


def messages_ids(tokenizer, messages: list) -> tuple:
  """Chat form [{'role', 'content'}, ...] -> (ids, loss mask): the loss covers assistant turns and their EOS."""
  if _template(tokenizer):
    return _template_messages_ids(tokenizer, messages)
  _need_roles(tokenizer)
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


def _template_messages_ids(tokenizer, messages: list) -> tuple:
  """Rendered text cut where each assistant turn starts and ends; every piece is encoded on its own, as a prompt
  is at generation time, and the assistant pieces (content and the template's end of turn) carry the loss."""
  pieces, done = [], ""
  for i, m in enumerate(messages):
    if m["role"] == "assistant":
      pieces.append((_extend(done, render(tokenizer, messages[:i], True)), 0))
      done += pieces[-1][0]
    text = render(tokenizer, messages[:i + 1], False)
    pieces.append((_extend(done, text), int(m["role"] == "assistant")))
    done = text
  ids, mask = [], []
  for text, loss in pieces:
    if text:
      part = tokenizer.encode(text).tolist()
      ids += part
      mask += [loss] * len(part)
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def _extend(done: str, text: str) -> str:
  if not text.startswith(done):
    raise UserError("the tokenizer's chat template renders a conversation differently from its beginning, so "
                    "assistant turns cannot be told apart; use prompt/answer records")
  return text[len(done):]


def _need_roles(tokenizer):
  if not getattr(tokenizer, "role_ids", None) or getattr(tokenizer, "bos_id", None) is None:
    raise UserError("this tokenizer has neither a chat template (chat_template in tokenizer_config.json) nor the "
                    "<bos>/<system>/<user>/<assistant> tokens of the native template; add a chat template to its "
                    "tokenizer_config.json")


def response_text(tokenizer, tokens, mask=None) -> str:
  """Decoded response up to (not including) EOS."""
  tokens = np.asarray(tokens)
  if mask is not None:
    tokens = tokens[np.asarray(mask, bool)]
  eos = np.nonzero(tokens == tokenizer.eos_id)[0]
  if len(eos):
    tokens = tokens[:eos[0]]
  return tokenizer.decode(tokens)
