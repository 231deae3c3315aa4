#!/usr/bin/env bash
# The GPU checks, as one script for a lent device machine (CUDA, bf16): the device test cases
# and the value-scoring benchmark, with a CPU baseline on the same machine. Needs, carried from
# the development machine: .devicekit (python benchmarks/device_kit.py .devicekit: SmolLM2's
# shape and tokenizer without its tensors) and .whl (the gguf wheel). Writes to $OUT.
# SKIP_TESTS=1, DTYPES="bfloat16", CPU_BASELINE=0 narrow a rerun.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.devicekit:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest --noconftest -p no:cacheprovider -q -rA tests/test_device.py 2>&1 | tail -25 \
    | tee "$OUT/tests.log"
fi
# Five seconds of large products first: an idle GPU clocks down (345 vs 1980 MHz seen here).
python3 -c "import torch, time
a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16); t = time.time()
while time.time() - t < 5: a @ a
torch.cuda.synchronize()"
for dt in ${DTYPES:-bfloat16 float32}; do
  python3 benchmarks/bench_scoring.py --random-weights --device cuda --dtype $dt --repeats 10 \
    --profile --json "$OUT/scoring_cuda_$dt.json" 2>&1 | grep -v -i warn | tee "$OUT/scoring_cuda_$dt.log"
done
if [ "${CPU_BASELINE:-1}" = 1 ]; then
  python3 benchmarks/bench_scoring.py --random-weights --device cpu --dtype float32 --repeats 3 \
    --prefixes 64 256 --threads 16 --json "$OUT/scoring_cpu16.json" 2>&1 | grep -v -i warn \
    | tee "$OUT/scoring_cpu16.log"
fi
