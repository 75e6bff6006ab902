# GPU run 2: the NLU quality study (MiniLM x vader-movies, 15 configs, 3 seeds, ablations, init study).
source benchmarks/gpu/setup.sh
timeout 345 python3 benchmarks/quality_nlu.py --device cuda --model .device/minilm-fp16 --workers 12 \
    --deadline-seconds 290 --grace-seconds 40 --plot --out "$OUT" 2>&1 | tail -40
