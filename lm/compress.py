"""Compress files with a trained model:

  python -m lm.compress encode --checkpoint=RUN INPUT OUTPUT
  python -m lm.compress decode --checkpoint=RUN INPUT OUTPUT

RUN is a run directory (launch.py --workdir). Decoding needs the same checkpoint, and the same backend and
JAX version, as encoding. Bad input (wrong model, truncated or corrupt file) ends with one line on stderr,
exit status 2, and no OUTPUT written: the output goes to a temporary file that is renamed only when complete.
"""
import argparse
import logging
import os
import sys
import tempfile
import time

from lm.errors import UserError

PROGRESS_BYTES = 32 * 1024  # show a progress bar (on a terminal) from this input size on


def read(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise UserError(f"cannot read {path!r}: {e.strerror}") from None


def write_atomic(path: str, data: bytes):
  """Write to a temporary file beside `path`, then rename: a reader never sees a partial file."""
  directory = os.path.dirname(os.path.abspath(path))
  try:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  except OSError as e:
    raise UserError(f"cannot write {path!r}: {e.strerror}") from None
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException as e:
    os.unlink(tmp)
    if isinstance(e, OSError):
      raise UserError(f"cannot write {path!r}: {e.strerror}") from None
    raise


def summary(verb: str, original: int, coded: int, seconds: float) -> str:
  bpb = 8 * coded / original if original else 0.0
  ratio = f"{original / coded:.2f}x" if coded else "-"
  return (f"{verb} {original:,} bytes <-> {coded:,} bytes: {bpb:.3f} bits/byte, ratio {ratio}, "
          f"{seconds:.2f} s, {original / max(seconds, 1e-9):,.0f} bytes/s")


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m lm.compress", description=__doc__.splitlines()[0])
  p.add_argument("mode", choices=("encode", "decode"))
  p.add_argument("input")
  p.add_argument("output")
  p.add_argument("--checkpoint", required=True, help="run directory (launch.py --workdir)")
  p.add_argument("--chunk_size", type=int, default=0, help="encode: bytes per chunk (0: the model's context)")
  p.add_argument("--batch_size", type=int, default=128, help="encode: chunks coded in lockstep per model call")
  return p.parse_args(argv)


def run(args):
  from lm import compression
  data = read(args.input)
  coder = compression.Coder.from_run(args.checkpoint, chunk_size=args.chunk_size, batch_size=args.batch_size)
  t0 = time.perf_counter()
  if args.mode == "encode":
    out = coder.encode(data, progress=len(data) >= PROGRESS_BYTES)
    original, coded = len(data), len(out)
  else:
    out = coder.decode(data, progress=len(data) >= PROGRESS_BYTES // 4)
    original, coded = len(out), len(data)
  seconds = time.perf_counter() - t0
  write_atomic(args.output, out)
  print(summary(f"{args.mode}d", original, coded, seconds))


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs restores at INFO and WARNING
  try:
    run(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
