"""Loading time and peak host memory of Hugging Face imports (checkpoint.init_from = a HF directory).

  python benchmarks/hf_load.py [--out=/tmp/hf_bench] [--sizes=tiny,llama_50m,gpt2_124m]

Each model is a random one made with transformers (torch, in a subprocess) and saved with save_pretrained, once.
Each load then runs in a fresh process that never imports torch: Setup(config).init_from(dir), timed, with
  rss_peak:   the process's peak resident memory (ru_maxrss) minus its resident memory before loading: on the
              CPU backend the loaded params themselves live in host memory, and so do the memory-mapped file
              pages safetensors reads;
  staging:    tracemalloc's peak of Python/NumPy allocations during a second load: the host copies the loader
              makes on the way to the devices (about one tensor and its converted layout at a time, not the model).
For reference, transformers loading the same directory (from_pretrained, float32; the second load of a process, so
its lazy imports are not counted).
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {
    # the largest model of tests/test_hf.py's families
    "tiny": ("llama", dict(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)),
    "llama_50m": ("llama", dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)),
    "gpt2_124m": ("gpt2", dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)),
}

MAKE = """
import json, sys, torch, transformers
kind, kw, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
cfg = (transformers.GPT2Config if kind == "gpt2" else transformers.LlamaConfig)(**kw)
transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out, max_shard_size="200MB")
"""
REFERENCE = """
import json, sys, time, torch, transformers
transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)  # imports the model's modules
t0 = time.perf_counter()
transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
print(json.dumps({"transformers_s": time.perf_counter() - t0}))
"""


def measure(directory: str) -> dict:
  """Runs in its own process: load `directory` through Setup.init_from and report time and memory."""
  import resource
  import time
  import tracemalloc
  import jax
  from configs import base
  from lm import model as model_lib
  from lm.setup import Setup
  c = base.get_config()
  c.model = model_lib.ModelConfig.config()
  c.checkpoint.init_from = directory
  setup = Setup(c)
  c = setup.config

  def load():
    with setup.use():
      return jax.block_until_ready(setup.init_from(directory, jax.random.PRNGKey(0)))

  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t0 = time.perf_counter()
  params = load()
  seconds = time.perf_counter() - t0
  rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  n = sum(x.size for x in jax.tree.leaves(params))
  del params
  tracemalloc.start()  # a second load, traced (tracing slows Python several-fold, so it is not the timed one)
  load()
  staging = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  files = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".safetensors"))
  return {"params": int(n), "params_mb": n * 4 / 2**20, "files_mb": files / 2**20, "load_s": seconds,
          "rss_peak_mb": (rss1 - rss0) / 1024, "staging_mb": staging / 2**20}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", default="/tmp/hf_bench")
  p.add_argument("--sizes", default=",".join(SIZES))
  p.add_argument("--measure", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.measure:
    print(json.dumps(measure(args.measure)))
    return
  env = dict(os.environ, PYTHONPATH=ROOT)
  rows = []
  for name in args.sizes.split(","):
    kind, kw = SIZES[name]
    d = os.path.join(args.out, name)
    if not os.path.exists(os.path.join(d, "config.json")):
      subprocess.run([sys.executable, "-c", MAKE, kind, json.dumps(kw), d], env=env, capture_output=True, check=True)
    r = subprocess.run([sys.executable, "-c", REFERENCE, d], env=env, capture_output=True, text=True, check=True)
    ref = json.loads(r.stdout.strip().splitlines()[-1])
    r = subprocess.run([sys.executable, __file__, f"--measure={d}"], env=env, capture_output=True, text=True,
                       check=True)
    rows.append({"model": name, **json.loads(r.stdout.strip().splitlines()[-1]), **ref})
  print("| model | params | safetensors | load (ours) | load (transformers) | peak RSS growth | host staging peak |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    ref = f"{r['transformers_s']:.2f} s"
    print(f"| {r['model']} | {r['params']:,} | {r['files_mb']:.1f} MiB | {r['load_s']:.2f} s | {ref} | "
          f"{r['rss_peak_mb']:.1f} MiB | {r['staging_mb']:.1f} MiB |")


if __name__ == "__main__":
  main()
