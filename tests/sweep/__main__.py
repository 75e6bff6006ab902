"""``python -m tests.sweep [--table]``: run the sweep, print a summary, write the support table."""

from __future__ import annotations

import sys

import torch

from .report import markdown, write
from .test_sweep import sweep_results


def main(argv: list[str]) -> int:
    """Run every architecture; with ``--table`` also write ``docs/model_support.md``."""
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    results = sweep_results()
    if "--table" in argv:
        print(f"wrote {write(results)}")
    else:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
