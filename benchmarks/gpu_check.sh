#!/usr/bin/env bash
# The GPU checks of the speed work, as one script of a few minutes on a machine with one NVIDIA GPU:
#   1. benchmarks/throughput.py on configs/lm_125m.py (bf16, cuDNN attention): tokens/s and MFU, at the config's
#      batch of 64 and at 32; the XLA attention path too if the cuDNN one fails;
#   2. the dry run of configs/mistral_7b.py on the GPU backend (one device: fsdp=1), scanned and unrolled layers:
#      compile time and XLA's memory figures.
# Its results on one H200, and what they mean: experiments/SPEED_NOTES.md ("On a GPU").
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]       # from the repo root; each part is time-limited, none stops the rest
#
# The machine's own jax/flax/optax are used. Packages it lacks can travel as wheels in .whl/ (installed here
# into /tmp/site, put first on PYTHONPATH).
set -u
LOG=${1:-${OUT:-/tmp}}/gpu_check.log
: > "$LOG"  # a fresh log: the XLA-attention fallback below reads this run's MFU line, not an earlier run's
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:.
fi

run() {  # run SECONDS NAME COMMAND...: one part, its output in the log, its exit status and wall time after it
  local limit=$1 name=$2; shift 2
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "^[IW][0-9]\{4\} " | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s wall" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee -a "$LOG"

T="benchmarks/throughput.py --config=configs/lm_125m.py --steps=100 --warmup=5"
run 240 "125M bf16, batch 64" $PY $T
if ! grep -q "^MFU" "$LOG"; then run 180 "125M bf16, XLA attention" $PY $T --config.model.attention_impl=xla; fi
run 180 "125M bf16, batch 32" $PY $T --config.train.batch_size=32

D="launch.py --config=configs/mistral_7b.py --dry_run --config.mesh.fsdp=1 --config.mesh.data=1"
run 120 "7B dry run, scanned layers" $PY $D --config.model.scan_layers=True
run 240 "7B dry run, unrolled layers" $PY $D
