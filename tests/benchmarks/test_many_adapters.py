"""benchmarks/many_adapters.py: the smoke run prints every table and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_many_adapters_smoke(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "many_adapters.py"), "--quick", "--batches", "1",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for heading in ("## One adapter in cached decoding", "## 8 rows, 8 adapters", "## Memory"):
        assert heading in done.stdout
    assert "| lora | decoding step |" in done.stdout
    assert not any(tmp_path.iterdir())
