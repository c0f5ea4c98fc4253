"""Report: a run's model as a lossless compressor, against gzip -9, bz2 -9, xz -9 and zstd -19.

  python experiments/compression.py --checkpoint=runs/shakespeare [--input=FILE] [--batch_size=128]

Without --input the file is the TFDS test split of the run's dataset (Tiny Shakespeare for the default run).
Prints one table: size, bits per byte, ratio, the "adjusted" size that also counts the model's parameters
(as stored, float32) as Delétang et al. do, and encode/decode speed in bytes/s; the model's rows add its
cross-entropy (an ideal coder's size) and the coder's overhead over it. Speeds are steady state: the model
step is compiled by a first, untimed encode. Results also go to --out/report.json.
"""
import argparse
import bz2
import gzip
import json
import logging
import lzma
import os
import pathlib
import time

import zstandard

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("LM_TFDS_DIR", str(ROOT / ".tfds"))
if (ROOT.parent / "shared" / "data" / "tinyshakespeare").is_dir():
  os.environ.setdefault("LM_MANUAL_DIR", str(ROOT.parent / "shared" / "data" / "tinyshakespeare"))

BASELINES = {
    "gzip -9": (lambda b: gzip.compress(b, 9), gzip.decompress),
    "bz2 -9": (lambda b: bz2.compress(b, 9), bz2.decompress),
    "xz -9": (lambda b: lzma.compress(b, preset=9), lzma.decompress),
    "zstd -19": (lambda b: zstandard.ZstdCompressor(level=19).compress(b),
                 lambda b: zstandard.ZstdDecompressor().decompress(b)),
}


def timed(fn, *args):
  t0 = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - t0


def test_split(run_dir: str) -> bytes:
  from lm import runs
  from lm.data import sources
  text = sources.source(runs.load_config(run_dir).data, "test")[0]["text"]
  return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def measure(run_dir: str, data: bytes, batch_size: int) -> dict:
  from lm import compression
  coder = compression.Coder.from_run(run_dir, batch_size=batch_size)
  coder.encode(data)  # compile
  blob, t_enc = timed(coder.encode, data)
  out, t_dec = timed(coder.decode, blob)
  assert out == data, "round trip failed"
  ce_bytes = coder.cross_entropy_bits(data) / 8
  rows = [{"method": "model cross-entropy (ideal)", "bytes": ce_bytes}]
  rows.append({"method": "model + range coder", "bytes": len(blob), "adjusted": len(blob) + coder.param_bytes(),
               "encode_bps": len(data) / t_enc, "decode_bps": len(data) / t_dec,
               "overhead_bytes": len(blob) - ce_bytes})
  for name, (comp, decomp) in BASELINES.items():
    packed, t_c = timed(comp, data)
    unpacked, t_d = timed(decomp, packed)
    assert unpacked == data
    rows.append({"method": name, "bytes": len(packed), "adjusted": len(packed), "encode_bps": len(data) / t_c,
                 "decode_bps": len(data) / t_d})
  for r in rows:
    r["bits_per_byte"] = 8 * r["bytes"] / len(data)
    r["ratio"] = len(data) / r["bytes"]
  return {"checkpoint": run_dir, "input_bytes": len(data), "chunk_size": coder.chunk_size,
          "batch_size": batch_size, "rows_per_call": coder.rows(-(-len(data) // coder.chunk_size)),
          "n_params": coder.n_params(), "param_bytes": coder.param_bytes(), "results": rows}


def table(report: dict) -> str:
  lines = [f"input: {report['input_bytes']:,} bytes; model: {report['n_params']:,} params "
           f"({report['param_bytes']:,} bytes); chunks of {report['chunk_size']} bytes, "
           f"{report['rows_per_call']} per model call",
           f"{'method':<28} {'bytes':>9} {'bits/byte':>9} {'ratio':>6} {'adjusted':>10} {'enc B/s':>11} "
           f"{'dec B/s':>11}"]
  for r in report["results"]:
    adj = f"{r['adjusted']:,.0f}" if "adjusted" in r else "-"
    enc = f"{r['encode_bps']:,.0f}" if "encode_bps" in r else "-"
    dec = f"{r['decode_bps']:,.0f}" if "decode_bps" in r else "-"
    lines.append(f"{r['method']:<28} {r['bytes']:>9,.0f} {r['bits_per_byte']:>9.3f} {r['ratio']:>6.2f} {adj:>10} "
                 f"{enc:>11} {dec:>11}")
  coder = report["results"][1]
  lines.append(f"coder overhead over the model's cross-entropy: {coder['overhead_bytes']:,.0f} bytes "
               f"({100 * coder['overhead_bytes'] / report['results'][0]['bytes']:.2f}%)")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="run directory (launch.py --workdir)")
  p.add_argument("--input", default="", help="file to compress (default: the dataset's test split)")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--out", default=str(ROOT / "runs" / "compression"))
  args = p.parse_args()
  logging.getLogger("absl").setLevel(logging.ERROR)
  from lm.errors import UserError
  try:
    data = pathlib.Path(args.input).read_bytes() if args.input else test_split(args.checkpoint)
    report = measure(args.checkpoint, data, args.batch_size)
  except (UserError, OSError) as e:
    raise SystemExit(f"error: {e}") from None
  report["input"] = args.input or "test split"
  print(table(report))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
