#!/usr/bin/env bash
# GPU check for a machine with one NVIDIA GPU, at most 8 minutes; the last stdout line is one JSON object.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # print the steps and their time limits, run nothing
#
# Steps (each under `timeout`, the sum of the limits is 470 s):
#   1. the `gpu`-marked tests (pytest -m gpu);
#   2. ~100 `base` bf16 pretraining steps fed by the shard-level chip loader: step time, samples/s,
#      MFU against the card's bf16 peak, peak memory (benchmarks/gpu_check.py train);
#   3. torchrun with NCCL: `python -m pipelines.pretrain` under torchrun, 1 process on the GPU, `tiny`;
#   4. `aom embed` on a LocalCUDACluster whose worker advertises GPU=1 (embed tasks annotated).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
PY=${PY:-.venv/bin/python}
WORK=${WORK:-$(mktemp -d -t aom-gpu-check-XXXXXX)}
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=1
fi

run_step() {  # name limit_s command...
    local name=$1 limit=$2
    shift 2
    if [[ $DRY -eq 1 ]]; then
        echo "step $name (<= ${limit}s): $*"
        echo "{\"part\": \"$name\", \"dry_run\": true}" > "$WORK/$name.json"
        return 0
    fi
    echo "== $name (<= ${limit}s)" >&2
    local start=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
    rc=$?
    tail -n 5 "$WORK/$name.err" >&2
    local last
    last=$(grep '^{' "$WORK/$name.out" | tail -n 1)
    if [[ -n "$last" ]]; then
        echo "$last" > "$WORK/$name.json"
    else
        "$PY" -c 'import json, sys; print(json.dumps({"part": sys.argv[1], "rc": int(sys.argv[2]),
    "seconds": int(sys.argv[3]), "tail": open(sys.argv[4]).read()[-300:]}))' \
            "$name" "$rc" "$((SECONDS - start))" "$WORK/$name.err" > "$WORK/$name.json"
    fi
    return 0
}

# 1. gpu-marked tests: pytest's summary line becomes the part's JSON
run_step gpu_tests 120 bash -c "$PY -m pytest -q -m gpu -p no:cacheprovider tests | tail -n 3; \
    echo \"{\\\"part\\\": \\\"gpu_tests\\\", \\\"rc\\\": \${PIPESTATUS[0]}}\""

# 2. base bf16 pretraining steps, fed by the new loader
run_step train 180 "$PY" benchmarks/gpu_check.py train --device cuda --config base --steps 100 \
    --batch-size 32 --workers 4 --work "$WORK"

# 3. torchrun + NCCL (one process on the one GPU; the engine picks NCCL on CUDA)
run_step torchrun 70 bash -c "$PY -m torch.distributed.run --standalone --nproc-per-node=1 \
    -m pipelines.pretrain --cubes \"\$(ls -d $WORK/cubes-1x1-t3 2>/dev/null || echo missing)\" \
    --out $WORK/torchrun --config tiny --max-steps 5 --batch-size 8 --chip-m 480 --no-progress \
    && echo '{\"part\": \"torchrun\", \"rc\": 0, \"backend\": \"nccl\"}'"

# 4. aom embed on a LocalCUDACluster with the GPU resource annotation
run_step embed 100 "$PY" benchmarks/gpu_check.py embed-cluster --work "$WORK" --device cuda --precision bf16

"$PY" benchmarks/gpu_check.py merge "$WORK/gpu_tests.json" "$WORK/train.json" "$WORK/torchrun.json" \
    "$WORK/embed.json"
