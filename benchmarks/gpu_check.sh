#!/usr/bin/env bash
# The GPU check, in one go (about 8 minutes on one GPU before stage 5, which may add up to 4): prints one table.
#
#   bash benchmarks/gpu_check.sh
#
# 1. the mask's step time as a ratio to sft, gmt and rmt at both scopes, SmolLM2-135M's shape
#    in bf16 on the GPU (benchmarks/mask_overhead.py --model smollm2 --dtype bf16 --device cuda);
# 2. tokens/s and model-FLOPs utilisation of the recipe on one GPU (benchmarks/train_throughput.py,
#    a SmolLM2-sized tiny Llama in bf16, through Ray Train);
# 3. an FSDP run on NCCL (world size 1) with bf16 autocast (python -m gmt_ray.train);
# 4. the rehearsal of experiments/math.yaml on the GPU (python -m gmt_ray.sweep ... --rehearse);
# 5. useful tokens/s of padded against packed steps (data.packing), a SmolLM2-sized tiny Llama in
#    bf16 on math.yaml's lengths and micro-batches (benchmarks/packing.py).
# Where there is no GPU it says so and exits 0. Each stage has its own time limit; the table
# says which passed and where its output is.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c 'import torch, gmt_ray' 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import torch and gmt_ray: activate gmt-ray's environment (or set PYTHON)" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no GPU here (torch.cuda.is_available() is False): nothing to measure"
  exit 0
fi
out=${GPU_CHECK_OUT:-$(mktemp -d)}
mkdir -p "$out"
"$PYTHON" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0

rows=()
stage() {  # name, seconds allowed, log file, command...
  local name=$1 limit=$2 log=$3; shift 3
  local started=$SECONDS status=ok
  timeout "$limit" "$@" >"$log" 2>&1 || status="FAILED ($?)"
  rows+=("$name|$status|$((SECONDS - started)) s|$log")
}

stage "mask overhead (SmolLM2 shape, bf16)" 150 "$out/mask_overhead.txt" \
  "$PYTHON" benchmarks/mask_overhead.py --model smollm2 --dtype bf16 --device cuda --steps 5 --micro-batches 4 --batch 8 --seq 512
stage "recipe tokens/s and MFU (1 GPU, bf16)" 150 "$out/train_throughput.txt" \
  "$PYTHON" benchmarks/train_throughput.py --steps 20 --rounds 1 \
  --set resources.use_gpu=true --set model.dtype=bf16 --set model.tiny.vocab_size=8192 \
  --set model.tiny.hidden_size=576 --set model.tiny.intermediate_size=1536 --set model.tiny.num_layers=30 \
  --set model.tiny.num_heads=9 --set data.max_length=512 --set train.micro_batch_size=16 --set train.grad_accum=2
stage "FSDP on NCCL, world size 1, bf16 autocast" 120 "$out/fsdp.txt" \
  "$PYTHON" -m gmt_ray.train --run-name gpu-check-fsdp --set storage_path="$out/runs" \
  --set train.parallelism=fsdp --set resources.use_gpu=true --set model.dtype=bf16 \
  --set train.max_steps=20 --set train.eval_every=10 --set mask.method=gmt --set mask.mask_ratio=0.9
stage "rehearsal of experiments/math.yaml" 300 "$out/rehearsal.txt" \
  bash -c "cd '$out' && '$PYTHON' -m gmt_ray.sweep '$PWD/experiments/math.yaml' --rehearse"
stage "packing: useful tokens/s, padded vs packed (bf16)" 240 "$out/packing.txt" \
  "$PYTHON" benchmarks/packing.py --device cuda --dtype bf16 --hidden-size 576 --intermediate-size 1536 \
  --layers 30 --heads 9 --vocab 8192 --steps 10

echo
echo "== figures"
grep -E "^(gmt|rmt|sft) " "$out/mask_overhead.txt" | head -8
grep -E "^(method|sft|gmt|rmt) " "$out/train_throughput.txt" | head -4
grep -E "^done in" "$out/fsdp.txt"
grep -E "^(padded|packed|padding alone|packing:)" "$out/packing.txt"
echo
printf '%-44s %-12s %-8s %s\n' "stage" "status" "time" "output"
failed=0
for row in "${rows[@]}"; do
  IFS='|' read -r name status seconds log <<<"$row"
  printf '%-44s %-12s %-8s %s\n' "$name" "$status" "$seconds" "$log"
  [ "$status" = ok ] || failed=1
done
exit $failed
