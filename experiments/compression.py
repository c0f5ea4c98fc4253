"""Report: a run's model as a lossless compressor on five kinds of input, against gzip, bzip2, xz and zstd.

  python experiments/compression.py --checkpoint=runs/shakespeare [--inputs=shakespeare,license] [--modes=...]

Inputs (each recorded with its size and sha256 in the report):
  shakespeare  the TFDS test split of the run's dataset (Tiny Shakespeare: 55,770 bytes)
  license      the first 13,936 bytes of this Python's LICENSE.txt (English legal text, unlike the training data)
  source       this Python's json/encoder.py (Python source)
  json         setuptools' config/setuptools.schema.json (a JSON schema)
  random       16,384 bytes of np.random.default_rng(0)
Ours, each encoded and decoded (the round trip is asserted): static (the network alone), adaptive (learning
while coding), mixing (static network + context mixing), adaptive+mixing (the CLI's default). "model" is the
model's own container (lm.compress with the codec fallback off: what the model achieves); "written" is what
`encode` writes (the smaller of that and stored/zstd/bzip2/xz). Speeds are steady state: an untimed encode of a
prefix with the same layout compiles every shape first. Baselines are Python's bindings of the same libraries
as the CLI tools (xz -9e = preset 9 | PRESET_EXTREME). Writes --out/report.json and --out/report.md.
"""
import argparse
import bz2
import dataclasses
import gzip
import hashlib
import json
import logging
import lzma
import os
import pathlib
import sys
import time

import numpy as np
import zstandard

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LM_TFDS_DIR", str(ROOT / ".tfds"))
if (ROOT.parent / "shared" / "data" / "tinyshakespeare").is_dir():
  os.environ.setdefault("LM_MANUAL_DIR", str(ROOT.parent / "shared" / "data" / "tinyshakespeare"))

BASELINES = {
    "gzip -9": (lambda b: gzip.compress(b, 9, mtime=0), gzip.decompress),
    "bzip2 -9": (lambda b: bz2.compress(b, 9), bz2.decompress),
    "xz -9": (lambda b: lzma.compress(b, preset=9), lzma.decompress),
    "xz -9e": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    "zstd -19": (lambda b: zstandard.ZstdCompressor(level=19).compress(b),
                 lambda b: zstandard.ZstdDecompressor().decompress(b)),
}
LICENSE_BYTES = 13_936


def inputs(run_dir: str) -> dict:
  """name -> (description, bytes)."""
  import setuptools
  from lm import runs
  from lm.data import sources
  text = sources.source(runs.load_config(run_dir).data, "test")[0]["text"]
  version = f"python{sys.version_info.major}.{sys.version_info.minor}"
  license_path = os.path.join(sys.base_prefix, "lib", version, "LICENSE.txt")
  source_path = json.encoder.__file__
  json_path = os.path.join(os.path.dirname(setuptools.__file__), "config", "setuptools.schema.json")
  return {
      "shakespeare": ("TFDS test split", text.encode() if isinstance(text, str) else bytes(text)),
      "license": (f"{license_path}, first {LICENSE_BYTES:,} bytes", pathlib.Path(license_path).read_bytes()[:LICENSE_BYTES]),
      "source": (source_path, pathlib.Path(source_path).read_bytes()),
      "json": (json_path, pathlib.Path(json_path).read_bytes()),
      "random": ("np.random.default_rng(0).bytes(16384)", np.random.default_rng(0).bytes(16384)),
  }


def modes() -> dict:
  from lm import compression, dynamic_eval
  static = dynamic_eval.Adaptation()
  return {"static": dict(adapt=static, mix=None), "adaptive": dict(adapt=compression.DEFAULT_ADAPT, mix=None),
          "mixing": dict(adapt=static, mix=compression.DEFAULT_MIX),
          "adaptive+mixing": dict(adapt=compression.DEFAULT_ADAPT, mix=compression.DEFAULT_MIX)}


def timed(fn, *args, **kw):
  t0 = time.perf_counter()
  out = fn(*args, **kw)
  return out, time.perf_counter() - t0


def warmup_length(coder, n: int) -> int:
  """The shortest prefix (of 2 batches or more) coded with the same lanes as n bytes: the same compiled shapes."""
  rows, chunk = coder.layout(n).rows, coder.chunk_size
  for chunks in range(rows + 1, -(-n // chunk)):
    if coder.layout(chunks * chunk).rows == rows:
      return chunks * chunk
  return n


def measure_ours(setup, params, data: bytes, args, mode: str, settings: dict) -> dict:
  from lm import compression
  coder = compression.Coder(setup, params, chunk_size=args.chunk_size, context=args.context,
                            batch_size=args.batch_size, **settings)
  coder.encode(data[:warmup_length(coder, len(data))], fallback=False)  # compile
  blob, t_enc = timed(coder.encode, data, fallback=False)
  out, t_dec = timed(coder.decode, blob)
  assert out == data, f"{mode}: round trip failed"
  written = min([blob, *compression.codec_containers(data)], key=len)  # what coder.encode(data) writes
  assert coder.decode(written) == data
  n = max(len(data), 1)
  return {"method": mode, "bytes": len(blob), "written": len(written), "written_as": compression.mode_of(written),
          "bits_per_byte": 8 * len(blob) / n, "encode_bps": len(data) / t_enc, "decode_bps": len(data) / t_dec,
          "encode_s": t_enc, "decode_s": t_dec}


def measure_baselines(data: bytes) -> list:
  rows = []
  for name, (comp, decomp) in BASELINES.items():
    packed, t_c = timed(comp, data)
    unpacked, t_d = timed(decomp, packed)
    assert unpacked == data
    rows.append({"method": name, "bytes": len(packed), "written": len(packed),
                 "bits_per_byte": 8 * len(packed) / max(len(data), 1), "encode_bps": len(data) / t_c,
                 "decode_bps": len(data) / t_d})
  return rows


def table(name: str, entry: dict) -> str:
  n = entry["input_bytes"]
  lines = [f"### {name}: {entry['input']} ({n:,} bytes)", "",
           "| method | model container | bits/byte | written (as) | growth | encode B/s | decode B/s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in entry["results"]:
    written = f"{r['written']:,}" + (f" ({r['written_as']})" if "written_as" in r else "")
    lines.append(f"| {r['method']} | {r['bytes']:,} | {r['bits_per_byte']:.3f} | {written} | "
                 f"{r['written'] - n:+,} | {r['encode_bps']:,.0f} | {r['decode_bps']:,.0f} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="run directory (launch.py --workdir)")
  p.add_argument("--inputs", default="shakespeare,license,source,json,random")
  p.add_argument("--modes", default="static,adaptive,mixing,adaptive+mixing")
  p.add_argument("--chunk_size", type=int, default=0)
  p.add_argument("--context", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=0, help="0: lm.compression.DEFAULT_BATCH")
  p.add_argument("--out", default=str(ROOT / "runs" / "compression"))
  args = p.parse_args()
  logging.getLogger("absl").setLevel(logging.ERROR)
  from lm import compression, runs
  from lm.errors import UserError
  args.batch_size = args.batch_size or compression.DEFAULT_BATCH
  try:
    setup, params = runs.load(args.checkpoint)
    every = inputs(args.checkpoint)
  except (UserError, OSError) as e:
    raise SystemExit(f"error: {e}") from None
  chosen = {m: s for m, s in modes().items() if m in args.modes.split(",")}
  probe = compression.Coder(setup, params, chunk_size=args.chunk_size, context=args.context)
  report = {"checkpoint": args.checkpoint, "machine": compression.machine()[0], "n_params": probe.n_params(),
            "param_bytes": probe.param_bytes(), "chunk_size": probe.chunk_size, "context": probe.context,
            "batch_size": args.batch_size, "adapt": dataclasses.asdict(compression.DEFAULT_ADAPT),
            "mix": dataclasses.asdict(compression.DEFAULT_MIX), "inputs": {}}
  md = [f"checkpoint {args.checkpoint}: {report['n_params']:,} params ({report['param_bytes']:,} bytes float32); "
        f"chunks of {probe.chunk_size} bytes after {probe.context} of context, at most {args.batch_size} lanes; "
        f"{report['machine']}", ""]
  for name in args.inputs.split(","):
    desc, data = every[name]
    entry = {"input": desc, "input_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16], "results": []}
    for mode, settings in chosen.items():
      entry["results"].append(measure_ours(setup, params, data, args, mode, settings))
      print(f"{name} {mode}: {entry['results'][-1]['bytes']:,} bytes", flush=True)
    entry["results"] += measure_baselines(data)
    report["inputs"][name] = entry
    md += [table(name, entry), ""]
    print(md[-2], flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write("\n".join(md))


if __name__ == "__main__":
  main()
