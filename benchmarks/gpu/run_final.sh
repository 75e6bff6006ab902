# The GPU run behind benchmarks/results/{gpu_check.json, quality_nlu.*, cost.*} (about 9 minutes on an
# H200): correctness checks first; the quality study uses the fused attention path only if they pass.
source benchmarks/gpu/setup.sh
timeout 85 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tail -6
CHOICE=$(python3 -c "import json; c = json.load(open('$OUT/gpu_check.json'))['checks']; print('fused' if c.get('kernels', {}).get('ok') and c.get('models', {}).get('ok') else 'reference')" 2>/dev/null || echo reference)
echo "attention path for the quality study: $CHOICE"
timeout 345 python3 benchmarks/quality_nlu.py --device cuda --model .device/minilm-fp16 --workers 14 \
    --attention-path "$CHOICE" --deadline-seconds 290 --grace-seconds 40 --plot --out "$OUT/nlu" 2>&1 | tail -30
if [ "$CHOICE" = fused ]; then METHODS=""; else
    METHODS="--methods full bitfit lora adapter parallel-adapter kernel-mix peft-lora peft-prefix"; fi
timeout 105 python3 benchmarks/cost.py --device cuda --repeats 3 --gen-repeats 1 --deadline-seconds 75 \
    $METHODS --out "$OUT/cost" 2>&1 | tail -6
