#!/usr/bin/env bash
# The GPU measurements issue 18 leaves pending, as one prepared run for a session that is lent a device machine:
#   here:   scripts/device_wheels.sh            (once: wheels of fvcore and pydantic for the machine's Python)
#   device: run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=560)
# Writes each result under $OUT (or ./device_out): demt_step.json (DeMT / shared step ratio at 428x560, bf16,
# batch 8; goal <= 1.68), bench.json (`mtbench bench` of every model at its published setting, bf16: the
# README's MFU table; goals InvPT >= 35%, DeMT >= 25%), step_sync.json (what the removed per-step sync saved),
# odsf_16.txt (odsF over 654 full-size maps on 16 processes; goal <= 5 min), and log.txt with all output.
# Each step has its own time limit, so one slow step cannot take the others' time: 540 s at most in all.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device_out} scratch=$(mktemp -d)
runs=$scratch/bench site=$scratch/site  # $OUT brings back 8 files at most: the benches merge into one
mkdir -p "$out" "$runs"
exec > >(tee "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:$site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

step() {  # step SECONDS NAME COMMAND...: run with a limit, say how it ended
  local limit=$1 name=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local started=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - started)) s"
}

step 90 demt_step bash -c "python3 benchmarks/bench_demt_step.py --height 428 --width 560 --batch 8 --amp \
  --repeats 5 > '$out/demt_step.json'; cat '$out/demt_step.json'"
for model in demt invpt mtinet padnet; do
  for dataset in nyud pascal_context; do
    step 40 "bench $model $dataset" python3 -m mtbench.cli bench "$model" --dataset "$dataset" --amp bf16 \
      --repeats 10 --warmup 3 --json "$runs/bench_${model}_${dataset}.json"
  done
done
python3 -c "import glob, json, sys; json.dump([json.load(open(f)) for f in sorted(glob.glob(sys.argv[1]))],
  open(sys.argv[2], 'w'), indent=1)" "$runs/bench_*.json" "$out/bench.json"
step 60 step_sync python3 benchmarks/bench_step_sync.py --model demt --dataset nyud --amp --json "$out/step_sync.json"
step 70 odsf_16 bash -c "python3 benchmarks/bench_odsf.py --images 654 --nms --workers 16 | tee '$out/odsf_16.txt'"
