#!/usr/bin/env bash
# The GPU checks as one command, about 8 minutes on one GPU at most (each step has a time limit):
#   1. pytest -m cuda        the CUDA paths of every script (tests/test_cuda.py)
#   2. bench.py              our loop at fp32 / bf16 / fp16 against the textbook fp32 loop, thesis architecture
#                            128x128, batch 64, MFU; and the thesis epoch (200 critic + 25 generator updates at
#                            batch 64) against the thesis' 59.5 s
#   3. bench_memory.py       full / transfer / KD training memory (max_memory_allocated and tensor peak), batch 8
#                            (the thesis' KD batch) and 64: the scripts' defaults (frozen weights and teacher in
#                            bf16), each without and with --step-in-backward, against the thesis' baseline
#   4. bench.py --compile    bf16, batch 64, whatever time is left
# Every step writes its table (.md), numbers (.json) and log (.log) into OUTDIR; OUTDIR/status.txt has each
# step's exit status and seconds. A failed step does not stop the others; the exit status is 1 if any failed.
#
#   ./bench_cuda.sh OUTDIR              on the GPU
#   DRY=1 ./bench_cuda.sh OUTDIR        the same commands on the CPU at tiny sizes: proves the script works
set -u -o pipefail
cd "$(dirname "$0")"
out=${1:?usage: [DRY=1] ./bench_cuda.sh OUTDIR}
mkdir -p "$out" || exit 2
py=${PYTHON:-python}
[ -x .venv/bin/python ] && py=.venv/bin/python
budget=${BUDGET:-470}  # seconds for all steps together

if [ "${DRY:-0}" = 1 ]; then
    dev=(--device cpu --threads 1)
    size=(--img-size 32 --width 0.125)
    speed=(--batch-sizes 4 --steps 1 --rounds 2)
    mem_batches=(4)
else
    dev=(--device cuda)
    size=(--img-size 128 --width 1)
    speed=(--batch-sizes 64 --steps 10 --rounds 3)
    mem_batches=(8 64)
fi

failed=0
: > "$out/status.txt"
step() {  # step NAME SECONDS COMMAND...: run with a time limit (never past the budget), log, record the status
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    local left=$((budget - SECONDS))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -le 10 ]; then
        echo "$name: skipped, the ${budget} s budget is spent" | tee -a "$out/status.txt"
        failed=1
        return
    fi
    echo "== $name (at most $limit s): $*" >&2
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$out/$name.md" 2> "$out/$name.log"
    rc=$?
    [ "$rc" -ne 0 ] && failed=1
    echo "$name: exit $rc$([ "$rc" -eq 124 ] && echo ' (time limit)') after $((SECONDS - start)) s" | tee -a "$out/status.txt"
}

{ "$py" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available())"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} > "$out/env.txt" 2>&1

step pytest_cuda 150 "$py" -m pytest -m cuda tests/test_cuda.py -q -rsx -p no:cacheprovider
step bench_speed 200 "$py" bench.py "${dev[@]}" "${size[@]}" "${speed[@]}" --precision fp32,bf16,fp16 \
    --thesis-epoch --markdown --json "$out/bench_speed.json"
for b in "${mem_batches[@]}"; do
    step "bench_memory_b$b" 90 "$py" bench_memory.py "${dev[@]}" "${size[@]}" --batch-size "$b" --markdown \
        --rows full-torch-adam full transfer-bf16 kd-bf16 --json "$out/bench_memory_b$b.json"
done
step bench_compile 150 "$py" bench.py "${dev[@]}" "${size[@]}" "${speed[@]}" --precision bf16 --compile --no-check \
    --no-memory --markdown --json "$out/bench_compile.json"

echo "tables in $out (status.txt: every step's exit status)" >&2
exit $failed
