#!/usr/bin/env bash
# The GPU rows of bench/RESULTS.md in one go, on a machine with CUDA PyTorch but no Ray (the
# project's lent GPU machine: no registry there, so sevlm's one missing package travels as a
# wheel in .whl/, see bench/RESULTS.md). Every benchmark's full output goes to $OUT/NAME.log.
#
#   OUT=/tmp/gpu bash bench/gpu.sh [SCALE [NAME ...]]
#
# Each benchmark is stopped at its own time limit (seconds, times SCALE, default 1): about
# 10 minutes in all at most, one device call. NAMEs pick benchmarks (default: all but data),
# in this order: training speed and memory of the paper preset first, then generation, then
# Ray Data against a DataLoader with 4 and 8 of the machine's CPUs (data_4, data_8).
#
# The data benchmark needs Ray, whose wheel (79 MB) is over what one call carries. It sits
# split in two under .whl-ray/ (git-ignored: `split -b 40M -d`, with jsonschema and its
# dependencies, the only ones Ray needs that the machine lacks) and travels in two calls to
# one warm machine, the second within 30 s of the first:
#   run(command="mkdir -p /tmp/sevlm-ray && cp .whl-ray/a/* /tmp/sevlm-ray/", carry=[".whl-ray/a"])
#   run(command="OUT=$OUT bash bench/gpu.sh 1 data_4 data_8", carry=[".whl", ".whl-ray/b"])
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sevlm-gpu}
scale=${1:-1}
shift $(($# > 0 ? 1 : 0))
wanted=" ${*:-train memory_fp16 generate_paper generate_tiny} "
mkdir -p "$OUT"
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if ls .whl-ray/b/*.part01 /tmp/sevlm-ray/*.part00 >/dev/null 2>&1; then  # Ray, in halves
  ray_wheel=$(basename .whl-ray/b/*.part01 .part01)
  cat "/tmp/sevlm-ray/$ray_wheel.part00" ".whl-ray/b/$ray_wheel.part01" >"/tmp/sevlm-ray/$ray_wheel"
  (cd /tmp/sevlm-ray && sha256sum -c "$OLDPWD/.whl-ray/b/ray.sha256") || exit 1
  wheels+=("/tmp/sevlm-ray/$ray_wheel" .whl-ray/b/*.whl)
fi
if ((${#wheels[@]})); then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/sevlm-site "${wheels[@]}" || exit 1
fi
export PYTHONPATH="/tmp/sevlm-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
  >"$OUT/nvidia-smi.log" 2>&1
python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda",
  torch.version.cuda, "transformers", transformers.__version__)' >>"$OUT/nvidia-smi.log" 2>&1
cat "$OUT/nvidia-smi.log"

bench() {  # NAME SECONDS SCRIPT ARGS...: one benchmark, its log under $OUT, its table on stdout
  local name=$1 limit
  [[ $wanted == *" $name "* ]] || return 0
  limit=$(python3 -c "print(max(1, round($2 * $scale)))")
  shift 2
  echo "== $name: $* (limit ${limit}s)"
  timeout "$limit" python3 "$@" >"$OUT/$name.log" 2>&1
  echo "exit $? after ${SECONDS}s in all"
  grep -E '^(\||settings|phases|[a-z /]+: [0-9.]+x|.*/ .*: [0-9.]+|.*took [0-9.]+ s|error|warning)' "$OUT/$name.log"
}

bench train 300 bench/train_step.py --preset paper --settings released,eager,ours \
  --steps 40 --warmup 5 --rounds 2 --phases 10
bench memory_fp16 150 bench/train_step.py --preset paper --settings uncached,ours \
  --precision fp16 --steps 20 --warmup 3
bench generate_paper 90 bench/generate.py --preset paper --repeats 5 --phases
bench generate_tiny 60 bench/generate.py --repeats 5 --phases
for cpus in 4 8; do
  bench "data_$cpus" 240 bench/data.py --cpus "$cpus" --epochs-per-pass 10 --repeats 2 \
    --no-reference
done
