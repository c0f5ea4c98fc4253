# The second H200 call, as run (from the repo root, wheels in .whl/). .gpu/gradmem.py was the code now in
# benchmarks/grad_memory.py, same body.
set -u
LOG=$OUT/run2.log
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
f() { grep -v "^[IW][0-9]\{4\} " | tee -a $LOG; }
T="benchmarks/throughput.py --config=configs/lm_125m.py --steps=100 --warmup=5"
for b in 64 32; do s=$SECONDS; echo "=== batch $b" | f; timeout 150 python3 $T --config.train.batch_size=$b 2>&1 | f; echo "=== $((SECONDS - s)) s wall" | f; done
s=$SECONDS; timeout 150 python3 .gpu/gradmem.py 2>&1 | f; echo "=== gradmem $((SECONDS - s)) s wall" | f
s=$SECONDS; echo "=== batch 64 again" | f; timeout 120 python3 $T --config.train.batch_size=64 2>&1 | f; echo "=== $((SECONDS - s)) s wall" | f
