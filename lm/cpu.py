"""Settings that make XLA:CPU train small models fast; no effect on GPU or TPU.

Each was measured on the 2-core x86 machine of the README's results (A/B runs of the compiled step):
- YNNPACK's dots are about twice as slow as Eigen's for these small matmuls; keep Eigen's.
- XLA:CPU's tree-reduction rewrite turns every reduction (each LayerNorm, softmax and loss sum) into two
  kernels; for rows of a few hundred floats that costs time and buys no accuracy worth having.
- Param init runs once, but its threefry code took 2-4 s to compile at LLVM's -O3 for the Shakespeare models;
  at -O1 it compiles 1.5-2x faster into bit-identical params (tests/test_cpu.py checks; -O0 changes them).
- A train step's temporaries are one ~40 MB block, above glibc's largest mmap threshold (32 MB), so every
  step mmaps fresh pages and faults on each of them (~10k page faults, ~25% of the step). Keeping freed
  memory in the heap removes that.
"""
import ctypes
import ctypes.util

COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_disable_hlo_passes": "tree_reduction_rewriter",
}

INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def compiler_options() -> dict:
  """Options for jax.jit(compiler_options=...) of a train step on the current backend."""
  import jax  # noqa: PLC0415  (keep_freed_memory runs before jax is imported)
  return dict(COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def init_compiler_options() -> dict:
  """Options for jax.jit(compiler_options=...) of a param initialiser on the current backend."""
  import jax  # noqa: PLC0415
  return dict(INIT_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def keep_freed_memory() -> bool:
  """Serve large blocks from the heap and never return freed heap to the OS (glibc only).

  Call it first thing in an entry point: blocks mapped before it keep their pages churning. The process
  keeps its peak memory, as it would with tcmalloc or jemalloc. Returns whether it applied.
  """
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
  except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to tune
    return False
