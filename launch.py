"""Entry point: python launch.py --config=configs/<experiment>.py --workdir=runs/<name> [--config.a.b=v ...]

Modes (by the config's `mode`, default "train"): train (any objective), sample and eval (a run's checkpoint:
configs/sample.py, configs/eval.py).
`--dry_run` compiles the train step for the mesh without allocating weights and prints sizes and memory.
Bad input (unknown config key, bad value, missing file, corrupt data, a filesystem error) ends with one line on
stderr, exit 2. SIGTERM and Ctrl-C save a checkpoint and exit 143 and 130.
"""
import os
import sys

from lm import cpu

cpu.keep_freed_memory()  # before anything allocates; see lm/cpu.py

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, tb/, checkpoints/.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile for the mesh and print params, FLOPs and memory; no training.")
_OVERRIDE = flags.DEFINE_bool("override_config", False, "Continue a workdir whose saved config differs.")
_COORD = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def fail(message: str, status: int = 2):
  print(f"error: {message}", file=sys.stderr)
  quiet_exit(status)


def quiet_exit(status: int):
  """Exit with `status` after the one line that explains it. Background writers of a failed checkpoint save
  (tensorstore threads) can still print while the interpreter shuts down; the explanation has been given, so
  what they print goes nowhere."""
  sys.stderr.flush()
  sys.stdout.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  sys.exit(status)


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # bad value, e.g. --config.train.steps=abc
    fail(" ".join(str(e).split()))
  except (AttributeError, KeyError) as e:  # ml_collections: unknown --config.a.b key, with its "did you mean"
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    hint = " ".join(str(e).replace("\\n", " ").replace("\\'", "").strip("'\"").split())
    fail(f"unknown config key among {', '.join(bad)}: {hint}")
  except Exception as e:  # pylint: disable=broad-except  (the config file raised while it was imported)
    fail(cannot_load(argv, e))


def cannot_load(argv, e: Exception) -> str:
  """One line for a config file that is missing or fails to import, naming the file and the last error line."""
  where = next((a for a in argv[1:] if a.startswith("--config=")), "--config")
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return f"cannot load {where}: {type(e).__name__}" + (f": {lines[-1]}" if lines else "")


def main(argv, hooks=()):
  """`hooks`: extra lm.hooks.Hook for the train loop (tests inject faults this way)."""
  del argv
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and TFDS are chatty at INFO
  from lm.errors import Preempted, UserError
  try:
    try:
      config = _CONFIG.value
      mode = config.get("mode", "train") if config is not None else None
    except OSError as e:  # a missing config file: ml_collections defers the error to the first access
      fail(cannot_load(sys.argv, e))
    if config is None:
      fail("--config is required, e.g. --config=configs/pretrain_shakespeare.py")
    if _COORD.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
      import jax
      jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                                 process_id=_PID.value)
    if _DRY_RUN.value:
      from lm import dry_run
      dry_run.run(config)
    elif mode == "sample":
      from lm import sample
      sample.run(config)
    elif mode == "eval":
      from lm import eval_checkpoint
      eval_checkpoint.run(config)
    elif mode == "train":
      if not _WORKDIR.value:
        fail("--workdir is required for training, e.g. --workdir=runs/shakespeare")
      from lm import train
      result = train.run(config, _WORKDIR.value, allow_config_change=_OVERRIDE.value, hooks=hooks)
      if result:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    else:
      fail(f"config mode={mode!r} is unknown; use train, sample or eval")
  except UserError as e:
    fail(str(e))
  except Preempted as e:
    print(str(e), file=sys.stderr)
    quiet_exit(e.status)
  except KeyboardInterrupt:
    fail("interrupted (Ctrl-C) before training started; nothing was saved", status=130)
  except OSError as e:  # a filesystem error outside the paths that report their own (disk full, permissions)
    fail(f"{e.strerror or type(e).__name__}: {e.filename or e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
