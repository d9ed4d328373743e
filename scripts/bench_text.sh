#!/usr/bin/env bash
# Text measurements of BENCHMARKS.md ("Text: SST-2"), sized for a loaded 2-core CPU:
# throughput, KD mode (MiniLM-L6 teacher -> its first 2 layers) and SSL mode on sst2_1k.
# Usage: bash scripts/bench_text.sh <data-dir> <out-dir> [kd_steps] [ssl_steps] [seeds] [ssl_algos] [parts]
# parts: any of "throughput kd ssl" (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}; OUT=${2:-runs/text_bench}; KD_STEPS=${3:-250}; SSL_STEPS=${4:-200}; SEEDS=${5:-0}
SSL_ALGOS=${6:-supervised fixmatch uda flexmatch kd kdaif}; PARTS=${7:-throughput kd ssl}
PY=".venv/bin/python"; export OMP_NUM_THREADS=1
TRAIN=(nice -n 10 "$PY" tools/train.py --dataset sst2 --device cpu --data-dir "$DATA" --no-progress --set train.lr=2e-4)
mkdir -p "$OUT"
if [[ " $PARTS " == *" throughput "* ]]; then
echo "== throughput (sentences/s, supervised steps of 32 sentences)"
for net in hf:minilm-l6:layers=2 hf:minilm-l6; do
  nice -n 10 "$PY" tools/bench.py --algos supervised --dataset sst2 --net "$net" --batch-size 32 --uratio 0 --steps 10 \
    --device cpu --data-dir "$DATA"
done
fi
if [[ " $PARTS " == *" kd "* ]]; then
echo "== KD mode: teacher hf:minilm-l6 fine-tuned $KD_STEPS steps of 32 sentences"
"${TRAIN[@]}" --algo supervised --net hf:minilm-l6 --steps "$KD_STEPS" --eval-every "$KD_STEPS" --batch-size 32 --out "$OUT/teacher"
for algo in supervised kd kdaif; do
  extra=(); [ "$algo" != supervised ] && extra=(--teacher-ckpt "$OUT/teacher")
  "${TRAIN[@]}" --algo "$algo" --net hf:minilm-l6:layers=2 --steps "$KD_STEPS" --eval-every "$KD_STEPS" --batch-size 32 \
    --set data.val_per_class=100 "${extra[@]}" --out "$OUT/kd_$algo"
done
fi
[[ " $PARTS " == *" ssl "* ]] || exit 0
echo "== SSL mode on sst2_1k: $SSL_STEPS steps, batch 16 labelled + 16 unlabelled, seeds $SEEDS"
for seed in $SEEDS; do
  for algo in $SSL_ALGOS; do
    "${TRAIN[@]}" --dataset sst2_1k --algo "$algo" --net hf:minilm-l6:layers=2 --steps "$SSL_STEPS" --eval-every "$SSL_STEPS" \
      --batch-size 16 --uratio 1 --set data.val_per_class=100 --seed "$seed" --out "$OUT/ssl_${algo}_s$seed"
  done
done
