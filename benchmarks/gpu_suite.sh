#!/usr/bin/env bash
# The CUDA checks and measurements in one go, on a machine with an NVIDIA GPU:
#
#   bash benchmarks/gpu_suite.sh OUT_DIR
#
# 1. the GPU tests (tests/test_gpu.py; the TensorRT ones where the tensorrt package is installed);
# 2. training throughput at 224 px, MobileNetV3-Large student and ResNet-50 teacher, per method;
# 3. the digits demo distilled on the GPU (wall time, test metrics), then its student and teacher
#    benchmarked on the GPU (eager and torch.compile, batch 1 and 32);
# 4. the whole test suite, for what differs on a GPU machine (CUDA present, other versions).
# Each step's output goes to OUT_DIR; a failing step is reported and the next one still runs.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
work=$(mktemp -d)
failed=()

step() {  # step NAME COMMAND...: run, log to OUT_DIR/NAME.log, time it
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    if "$@" >"$out/$name.log" 2>&1; then
        echo "== $name: ok in $((SECONDS - t0)) s"
    else
        echo "== $name: FAILED (exit $?) in $((SECONDS - t0)) s; last lines:"; tail -n 15 "$out/$name.log"
        failed+=("$name")
    fi
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
    $py -c 'import tensorrt; print("tensorrt", tensorrt.__version__)' 2>/dev/null || echo "tensorrt: not installed"
    $py -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
} 2>&1 | tee "$out/env.txt"

step gpu_tests $py -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_deploy_pipeline.py -m "gpu or tensorrt"
step train_speed $py benchmarks/train_speed.py --device cuda --sizes 224 --batch 64 --steps 24 \
    --student mobilenetv3_large_100 --teacher resnet50 --out "$out/train_speed_cuda.json"
t0=$SECONDS
step demo_distill $py -m fopro_edge distill recipes/demo_digits.yaml --device cuda --out "$work/demo" --no-progress
echo "demo distill wall time: $((SECONDS - t0)) s" | tee -a "$out/demo_distill.log"
cp "$work/demo/metrics/metrics.md" "$out/demo_metrics_cuda.md" 2>/dev/null
step demo_bench $py -m fopro_edge bench --run "$work/demo" --device cuda --batch 1,32 --compile \
    --max-interference 100 --out "$out/bench_demo_cuda"
step full_suite $py -m pytest -q -p no:cacheprovider --maxfail=10 tests

rm -rf "$work"
if ((${#failed[@]})); then echo "failed steps: ${failed[*]}"; exit 1; fi
echo "all steps passed"
