"""The installed package carries its recipes, and the command line starts without the deep-learning stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from inducer.app.recipes import bundled

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "matplotlib", "tensorboard")


def test_the_wheel_contains_every_bundled_recipe(tmp_path):
    # Built from a copy, so that setuptools' build/ folder does not land in the checkout.
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip, "-w", tmp_path, project],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("inducer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"inducer/app/recipes/{name}.yaml" for name in bundled()} <= names
    assert len(bundled()) >= 6


def _imported_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def test_importing_the_cli_loads_no_deep_learning_library():
    assert _imported_after("import inducer") == []  # the package's names load on first use (PEP 562)
    assert _imported_after("import inducer.cli.main") == []


# The extras of pyproject.toml that the core install leaves out (import names).
APPLICATION = ("typer", "rich", "datasets", "pandas", "matplotlib", "tensorboard", "sacrebleu", "rouge_score",
               "nltk", "accelerate", "fastapi", "uvicorn", "peft", "trl", "bitsandbytes", "torchao")
_CORE_USE = textwrap.dedent(f"""
    import sys, tempfile
    APPLICATION = {APPLICATION!r}
    for name in APPLICATION if "--block" in sys.argv else ():
        sys.modules[name] = None  # 'import name' raises ImportError, as when it is not installed
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=100)
    model = BertForSequenceClassification(config).eval()
    # What transformers itself imports when they are installed (accelerate, torchao) is not ours.
    before = {{n.split(".")[0] for n, m in list(sys.modules.items()) if m is not None}}
    import inducer
    inducer.attach(model, inducer.InducerConfig(r_k=2, r_v=2))
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    with tempfile.TemporaryDirectory() as folder:
        inducer.save_adapter(model, folder)
        model = inducer.load_adapter(inducer.detach(model), folder).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, adapted)
    print(inducer.count_parameters(model))
    after = {{n.split(".")[0] for n, m in list(sys.modules.items()) if m is not None}}
    loaded = sorted((after - before) & set(APPLICATION))
    assert loaded == [], loaded
""")


def test_the_core_install_attaches_saves_and_loads_without_the_application():
    # Every package of the extras made unimportable: the library works, and did not try them.
    for mode in ("--block", "--watch"):  # unimportable; importable, but not imported
        out = subprocess.run([sys.executable, "-c", _CORE_USE, mode], capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, out.stderr
        assert "trainable" in out.stdout


def test_the_command_without_its_extra_names_the_extra_in_one_line():
    code = "import sys; sys.modules['typer'] = None; from inducer.cli.launch import main; main()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "pip install -e '.[cli]'" in out.stderr


@pytest.mark.slow
def test_a_fresh_venv_with_the_core_install_only(tmp_path):
    # The real thing (make test-slow): a new venv, torch's CPU wheel, the project without extras
    # (versions from the lock), then the same use; no package of an extra is installed at all.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "-c", ROOT / "requirements" / "lock.txt", ROOT], check=True)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True,
                               text=True, check=True).stdout.lower()
    # typer and rich may come with transformers' own command line; the rest only with our extras.
    brought = [name for name in APPLICATION if name not in ("typer", "rich")
               and f"{name.replace('_', '-')}==" in installed]
    assert brought == []
    out = subprocess.run([python, "-c", _CORE_USE, "--watch"], capture_output=True, text=True, check=False,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_the_readme_install_section_from_the_built_wheel_in_a_fresh_venv(tmp_path):
    # The README's install block, line by line, with '.[cli]' taken from the wheel `python -m build`
    # makes; then the README's Python examples and `inducer info` in that venv. Prints each step's time.
    import time

    from .test_doc_examples import blocks

    project = tmp_path / "project"
    skipped = shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "__pycache__", "site", "dist", "build",
                                     "runs", "demo")
    shutil.copytree(ROOT, project, ignore=skipped)
    times = {}
    started = time.perf_counter()
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "-o", tmp_path / "dist", project],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("inducer-*.whl")
    times["python -m build --wheel"] = time.perf_counter() - started
    readme = blocks(ROOT / "README.md")
    (install,) = [b for b in readme if b.marker == "install"]
    # One shell, as a reader types it (the venv stays activated), timing each line; the test's own venv
    # is taken off PATH so that `python -m venv` is the system's Python.
    script = ["set -e"]
    for line in install.code.splitlines():
        command = line.split("  #")[0].strip().replace("'.[cli]'", f"'{wheel}[cli]'")
        script += [f"start=$(date +%s.%N); {command}",
                   f"echo \"@@ $(echo \"$(date +%s.%N) - $start\" | bc) {command}\""]
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if Path(p).resolve() != Path(sys.executable).parent.resolve())
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=project, capture_output=True, text=True,
                          check=False, env={**os.environ, "PATH": path, "VIRTUAL_ENV": "", "PYTHONPATH": ""})
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    for line in done.stdout.splitlines():
        if line.startswith("@@ "):
            seconds, command = line[3:].split(" ", 1)
            times[command] = float(seconds)
    python = project / ".venv" / "bin" / "python"
    examples = [b for b in readme if b.kind == "python" and b.marker is None]
    for block in examples:
        started = time.perf_counter()
        done = subprocess.run([python, "-c", block.code], cwd=tmp_path, capture_output=True, text=True,
                              check=False, env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{block.where}\n{done.stderr[-3000:]}"
        times[f"README example {block.where}"] = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run([project / ".venv" / "bin" / "inducer", "info"], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0 and "--no-deps" in done.stdout, done.stderr[-3000:]
    times["inducer info"] = time.perf_counter() - started
    print("\n".join(f"{seconds:7.1f} s  {step}" for step, seconds in times.items()))


def test_the_package_and_pyproject_give_one_version():
    import tomllib

    import inducer

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert inducer.__version__ == declared
