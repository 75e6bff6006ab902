"""The ``inducer`` command's entry point: the command line, or one line saying which extra to install.

``pip install inducer`` is the library (torch, transformers, safetensors: ``attach``, ``save_adapter``,
``load_adapter``); the command line, training application and server come with extras (``[cli]``,
``[serve]``). Without them, the command says so instead of showing an ImportError's traceback.
"""

from __future__ import annotations

import sys

# Top-level packages of the ``cli`` and ``serve`` extras (pyproject.toml), by the extra that brings them.
EXTRA_OF = {name: "cli" for name in ("typer", "rich", "datasets", "pandas", "matplotlib", "tensorboard",
                                     "sacrebleu", "rouge_score", "nltk", "accelerate", "yaml", "tqdm")}
EXTRA_OF.update(fastapi="serve", uvicorn="serve")


def main() -> None:
    """Run the command line (:func:`inducer.cli.main.main`)."""
    try:
        from .main import main as cli_main
    except ImportError as error:
        extra = EXTRA_OF.get((error.name or "").split(".")[0])
        if extra is None:
            raise  # not a missing extra: a bug of ours or a broken install, shown in full
        print(f"inducer: the command line needs {error.name}, which the core install leaves out; install "
              f"the '{extra}' extra (from a checkout: pip install -e '.[{extra}]')", file=sys.stderr)
        raise SystemExit(2) from None
    cli_main()
