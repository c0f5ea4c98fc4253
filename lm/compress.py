"""Compress files with a trained model:

  python -m lm.compress encode --checkpoint=RUN INPUT OUTPUT [--adapt_lr=0] [--no_mix]
  python -m lm.compress decode --checkpoint=RUN INPUT OUTPUT

RUN is a run directory (launch.py --workdir). By default the model learns while it codes (--adapt_lr) and is
mixed with context models of the file (--mix); decoding reads every setting from the file. No output is more
than 10 bytes larger than its input: where the model loses, the file is stored or compressed by zstd, bzip2 or
xz instead. Decoding needs the same checkpoint, and the same kind of machine and JAX version, as encoding. Bad
input (wrong model, another machine, truncated or corrupt file) ends with one line on stderr, exit status 2,
and no OUTPUT written: the output goes to a temporary file that is renamed only when complete.
"""
import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time

from lm import dynamic_eval
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
  from lm import compression
  a, m = compression.DEFAULT_ADAPT, compression.DEFAULT_MIX
  p = argparse.ArgumentParser(prog="python -m lm.compress", description=__doc__.splitlines()[0])
  p.add_argument("mode", choices=("encode", "decode"))
  p.add_argument("input")
  p.add_argument("output")
  p.add_argument("--checkpoint", required=True, help="run directory (launch.py --workdir)")
  p.add_argument("--chunk_size", type=int, default=0, help="encode: bytes per chunk (0: half the model's context)")
  p.add_argument("--context", type=int, default=0, help="encode: bytes of context before each chunk (0: the rest)")
  p.add_argument("--batch_size", type=int, default=compression.DEFAULT_BATCH,
                 help="encode: chunks coded in lockstep per model call (fewer: more, smaller adaptation blocks)")
  p.add_argument("--adapt_lr", type=float, default=a.lr, help="encode: learning rate while coding (0: static model)")
  p.add_argument("--adapt_steps", type=int, default=a.steps, help="encode: optimiser steps per coded block")
  p.add_argument("--adapt_optimizer", default=a.optimizer, choices=dynamic_eval.OPTIMIZERS)
  p.add_argument("--adapt_params", default=a.params, choices=dynamic_eval.PARAM_SETS, help="encode: what adapts")
  p.add_argument("--mix", action=argparse.BooleanOptionalAction, default=True,
                 help="encode: mix the model with order-k, word and match models of the file")
  p.add_argument("--mix_lr", type=int, default=m.lr, help="encode: the mixer's learning rate")
  p.add_argument("--allow_other_machine", action="store_true",
                 help="decode: try a file coded on another kind of machine (the CRC32 still checks the result)")
  return p.parse_args(argv)


def coder_from_args(args):
  from lm import compression
  adapt = dynamic_eval.Adaptation(lr=args.adapt_lr, steps=args.adapt_steps, optimizer=args.adapt_optimizer,
                                  params=args.adapt_params)
  mix = dataclasses.replace(compression.DEFAULT_MIX, lr=args.mix_lr) if args.mix else None
  return compression.Coder.from_run(args.checkpoint, chunk_size=args.chunk_size, context=args.context,
                                    batch_size=args.batch_size, adapt=adapt, mix=mix,
                                    allow_other_machine=args.allow_other_machine)


def run(args):
  from lm import compression
  data = read(args.input)
  coder = coder_from_args(args)
  t0 = time.perf_counter()
  if args.mode == "encode":
    out = coder.encode(data, progress=len(data) >= PROGRESS_BYTES)
    original, coded, how = len(data), len(out), compression.mode_of(out)
  else:
    how = compression.mode_of(data)
    out = coder.decode(data, progress=len(data) >= PROGRESS_BYTES // 4)
    original, coded = len(out), len(data)
  seconds = time.perf_counter() - t0
  write_atomic(args.output, out)
  print(summary(f"{args.mode}d", original, coded, seconds) + f" ({how})")


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
