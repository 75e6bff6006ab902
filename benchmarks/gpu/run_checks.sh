# GPU run 1: correctness checks, a smoke run of the NLU study, the cost benchmark (about 4 minutes).
source benchmarks/gpu/setup.sh
timeout 110 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tail -20
timeout 60 python3 benchmarks/quality_nlu.py --device cuda --model .device/minilm-fp16 --workers 2 \
    --stages 1 --configs inducer,peft-lora --max-train-examples 512 --epochs 1 --deadline-seconds 35 \
    --grace-seconds 10 --out "$OUT/smoke" 2>&1 | tail -15
tar czf "$OUT/smoke.tgz" -C "$OUT" smoke && rm -rf "$OUT/smoke"
timeout 120 python3 benchmarks/cost.py --device cuda --repeats 3 --gen-repeats 2 --deadline-seconds 85 \
    --out "$OUT" 2>&1 | tail -15
