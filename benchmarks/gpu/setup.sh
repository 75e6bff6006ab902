# Sourced at the start of each GPU run (benchmarks/gpu/run_*.sh): the carried wheels and data, offline.
# Prepare the bundle first, here: python benchmarks/gpu/prepare_bundle.py (it writes .device/).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD INDUCER_CACHE=$PWD/.device/cache
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, transformers, peft, datasets, pyarrow; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"
