#!/usr/bin/env bash
# The GPU check of issue 9, sized for under 8 minutes on one GPU (not yet run on one), nothing downloaded:
#   1. throughput of FixMatch, FlexMatch and KD-AIF (WRN-28-2, CIFAR-10, batch 64, mu 7) against the
#      plain PyTorch floor, eager fp32, eager bf16 and compiled bf16, with peak memory and the hours
#      2^20 steps would take (tools/bench.py --floor);
#   2. the PIL DataLoader pipeline's images/s on this machine's cores (tools/bench.py --pil-pipeline);
#   3. a cifar10_4k FixMatch run of as many steps as fit in $GPU_CHECK_TRAIN_S (150) seconds of training at
#      the faster eager speed (no second compilation), evaluated at the end;
#   4. text rows (issue 21): supervised and FixMatch students on sst2_1k, batch 32, mu 7, against their text
#      floor, eager bf16 and compiled bf16 (dynamic shapes), for each of $GPU_CHECK_TEXT_NETS (default: the
#      2-layer and the 6-layer MiniLM); 10 timed steps after 3 warm-up steps (the first compiles);
#      GPU_CHECK_TEXT=0 skips them (estimated 2-3 of the 8 minutes, mostly compiling; not yet run on a GPU);
# then one table (stdout) and one JSON ($OUT/gpu_check.json).
#
#   bash tools/gpu_check.sh                    # on the GPU machine, from the repository root
#   GPU_CHECK_TINY=1 bash tools/gpu_check.sh   # a CPU test: digits_30, tiny batches, two eager configs (bf16 is a
#                                              # no-op on the CPU), no compile; text rows on sst2_8 with the
#                                              # networks of $GPU_CHECK_TEXT_NETS, eager fp32 (GPU_CHECK_TEXT=0: none)
#   bash tools/gpu_check.sh --data-only        # only make sure the CIFAR-10 batches exist
#
# Data: $GPU_CHECK_DATA (default ../shared/data). When cifar10/cifar-10-batches-py/ is absent there, it
# is rebuilt from cifar10/cifar10-jpeg.tar.gz with jpeg_to_batches.py beside the archive (~1 min).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
DATA=${GPU_CHECK_DATA:-../shared/data}
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
TINY=${GPU_CHECK_TINY:-0}
TEXT=${GPU_CHECK_TEXT:-1}
TEXT_NETS=${GPU_CHECK_TEXT_NETS:-hf:minilm-l6:layers=2 hf:minilm-l6}
mkdir -p "$OUT"

ensure_cifar10() {
    local batches="$DATA/cifar10/cifar-10-batches-py"
    if [ -f "$batches/data_batch_1" ]; then return 0; fi
    local archive="$DATA/cifar10/cifar10-jpeg.tar.gz"
    if [ ! -f "$archive" ] || [ ! -f "$DATA/cifar10/jpeg_to_batches.py" ]; then
        echo "gpu_check: no CIFAR-10 batches in $batches and no $archive + jpeg_to_batches.py to rebuild them; set GPU_CHECK_DATA" >&2
        exit 2
    fi
    echo "gpu_check: rebuilding $batches from $archive" >&2
    "$PY" "$DATA/cifar10/jpeg_to_batches.py" "$archive" "$batches"
}

if [ "${1:-}" = "--data-only" ]; then ensure_cifar10; exit 0; fi

if [ "$TINY" = 1 ]; then
    DATASET=digits_30; DEVICE=cpu; B=4; MU=2; STEPS=2; WARMUP=1; TRAIN_S=2; CONFIGS="eager_fp32 eager_bf16"
    NET_FLAGS=(); PIL_STEPS=2; WORKERS=1
    TEXT_DATASET=sst2_8; TEXT_CONFIGS="eager_fp32"; TEXT_B=4; TEXT_MU=2; TEXT_STEPS=2; TEXT_WARMUP=1
else
    ensure_cifar10
    DATASET=cifar10_4k; DEVICE=cuda; B=64; MU=7; STEPS=20; WARMUP=3; TRAIN_S=${GPU_CHECK_TRAIN_S:-150}
    CONFIGS="eager_fp32 eager_bf16 compiled_bf16"; NET_FLAGS=(--net wrn28_2); PIL_STEPS=10; WORKERS=0
    TEXT_DATASET=sst2_1k; TEXT_CONFIGS="eager_bf16 compiled_bf16"; TEXT_B=32; TEXT_MU=7; TEXT_STEPS=10; TEXT_WARMUP=3
fi
if [ "$TEXT" = 1 ] && [ ! -f "$DATA/glue/SST-2/train.tsv" ]; then
    echo "gpu_check: no $DATA/glue/SST-2/train.tsv for the text rows; set GPU_CHECK_DATA, or GPU_CHECK_TEXT=0 to skip them" >&2
    exit 2
fi
COMMON=(--dataset "$DATASET" --data-dir "$DATA" --batch-size "$B" --uratio "$MU" --device "$DEVICE" "${NET_FLAGS[@]}")

for config in $CONFIGS; do
    flags=(--set "train.amp=$([ "${config#*_}" = bf16 ] && echo true || echo false)")
    [ "${config%%_*}" = compiled ] && flags+=(--compile)
    "$PY" tools/bench.py --floor --algos fixmatch,flexmatch,kdaif --steps "$STEPS" --warmup "$WARMUP" \
        "${COMMON[@]}" "${flags[@]}" --json "$OUT/bench_$config.json"
done
"$PY" tools/bench.py --pil-pipeline --dataset "$DATASET" --data-dir "$DATA" --batch-size "$B" --uratio "$MU" \
    --steps "$PIL_STEPS" --warmup 1 --workers "$WORKERS" --json "$OUT/pil.json"

# the training run: as many steps as the faster eager FixMatch configuration does in TRAIN_S seconds
EAGER=$(for c in $CONFIGS; do case $c in eager_*) echo "$c" ;; esac; done)
TRAIN_STEPS=$("$PY" - "$OUT" "$TRAIN_S" $EAGER <<'PY'
import json, sys
out, seconds, configs = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
rows = [r for c in configs for r in json.load(open(f"{out}/bench_{c}.json"))["rows"] if r["algo"] == "fixmatch"]
print(max(1, int(seconds / min(r["s_per_step"] for r in rows))))
PY
)
BEST=$("$PY" -c "import json,sys; c=sys.argv[2:]; print(min(c, key=lambda k: [r for r in json.load(open(f'{sys.argv[1]}/bench_{k}.json'))['rows'] if r['algo']=='fixmatch'][0]['s_per_step']))" "$OUT" $EAGER)
train_flags=(--set "train.amp=$([ "${BEST#*_}" = bf16 ] && echo true || echo false)")
rm -rf "$OUT/train"
"$PY" tools/train.py --algo fixmatch "${COMMON[@]}" --steps "$TRAIN_STEPS" --eval-every "$TRAIN_STEPS" \
    --out "$OUT/train" --no-progress "${train_flags[@]}"
# text rows: bench_text<i>_<config>.json for the i-th network of TEXT_NETS
TEXT_RUNS=()
if [ "$TEXT" = 1 ]; then
    i=0
    for net in $TEXT_NETS; do
        i=$((i + 1))
        for config in $TEXT_CONFIGS; do
            flags=(--set "train.amp=$([ "${config#*_}" = bf16 ] && echo true || echo false)")
            [ "${config%%_*}" = compiled ] && flags+=(--compile)
            "$PY" tools/bench.py --floor --algos supervised,fixmatch --dataset "$TEXT_DATASET" --data-dir "$DATA" --net "$net" \
                --batch-size "$TEXT_B" --uratio "$TEXT_MU" --device "$DEVICE" --steps "$TEXT_STEPS" --warmup "$TEXT_WARMUP" \
                "${flags[@]}" --json "$OUT/bench_text${i}_$config.json"
            TEXT_RUNS+=("text${i}_$config=$net")
        done
    done
fi
"$PY" tools/gpu_check_report.py "$OUT" $CONFIGS --train-config "$BEST" ${TEXT_RUNS[@]+--text "${TEXT_RUNS[@]}"}
