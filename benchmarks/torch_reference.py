"""nanoGPT's CPU Shakespeare model in plain PyTorch, timed the same way as benchmarks/throughput.py.

The reference for the "as fast as nanoGPT" target, measured on the same machine:
  pip install -e '.[test]'   # torch is a test-only dependency of lm
  python benchmarks/torch_reference.py
Model: 4 layers x 4 heads x 128, context 64, batch 12, vocab 65, no bias, no dropout, AdamW, grad clip 1.0,
eager mode (nanoGPT's --compile=False), as in nanoGPT's model.py. Prints a table; asserts nothing.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH, VOCAB = 4, 4, 128, 64, 12, 65


class Block(nn.Module):

  def __init__(self):
    super().__init__()
    self.ln_1, self.ln_2 = nn.LayerNorm(N_EMBD, bias=False), nn.LayerNorm(N_EMBD, bias=False)
    self.c_attn, self.c_proj = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False), nn.Linear(N_EMBD, N_EMBD, bias=False)
    self.fc, self.proj = nn.Linear(N_EMBD, 4 * N_EMBD, bias=False), nn.Linear(4 * N_EMBD, N_EMBD, bias=False)

  def forward(self, x):
    b, t, c = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(N_EMBD, dim=2)
    q, k, v = (z.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(b, t, c)
    x = x + self.c_proj(y)
    return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class GPT(nn.Module):

  def __init__(self, vocab=VOCAB):
    super().__init__()
    self.wte, self.wpe = nn.Embedding(vocab, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
    self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
    self.ln_f = nn.LayerNorm(N_EMBD, bias=False)
    self.lm_head = nn.Linear(N_EMBD, vocab, bias=False)
    self.lm_head.weight = self.wte.weight
    for name, p in self.named_parameters():
      if p.dim() >= 2:
        nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * N_LAYER) if name.endswith(("c_proj.weight", "proj.weight"))
                        else 0.02)

  def logits(self, idx):
    x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
    for blk in self.blocks:
      x = blk(x)
    return self.lm_head(self.ln_f(x))

  def forward(self, idx, targets):
    logits = self.logits(idx)
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def nanogpt_adamw(model, lr=1e-3, weight_decay=0.1):
  """nanoGPT's configure_optimizers: decay matrices (and embeddings), not vectors; betas (0.9, 0.99)."""
  params = [p for p in model.parameters() if p.requires_grad]
  groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
  return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def main(steps=100, warmup=10):
  torch.manual_seed(0)
  model = GPT()
  opt = nanogpt_adamw(model)
  data = torch.randint(0, VOCAB, (200_000,))

  def step():
    ix = torch.randint(len(data) - BLOCK - 1, (BATCH,))
    x = torch.stack([data[i:i + BLOCK] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + BLOCK] for i in ix])
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  for _ in range(warmup):
    step()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  dt = (time.perf_counter() - t0) / steps
  rows = [("torch", f"{torch.__version__}, {torch.get_num_threads()} threads"),
          ("params", f"{sum(p.numel() for p in model.parameters()):,}"),
          ("step time", f"{dt * 1e3:.2f} ms (mean of {steps})"),
          ("tokens/s", f"{BATCH * BLOCK / dt:,.0f}")]
  for name, value in rows:
    print(f"{name:<10}  {value}")


if __name__ == "__main__":
  main()
