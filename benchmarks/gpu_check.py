"""Checks that need a CUDA GPU: the fused attention path against the reference, bf16 training, FSDP save.

CI has no GPU, so this is run by hand on one (see benchmarks/gpu/run.sh); it writes a JSON report:

    PYTHONPATH=src:. python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json

1. Kernel: ``fused_attention`` (CUDA memory-efficient kernel, LSE with a custom backward) against
   ``reference_attention`` in float64, in float32 and bfloat16, for head sizes that need the kernel's
   8-channel padding (5, 12) and that do not (64), with padding masks, causal masks, grouped-query
   heads and an additive bias (the 16-aligned bias path); outputs, LSE and the gradients of a loss
   that uses both.
2. Model: every tiny test family x every inducer variant, fused vs reference attention path on the GPU
   in float32: logits and trainable-parameter gradients.
3. Training: ``inducer train --precision bf16`` on a tiny BERT (CUDA, autocast), the adapter saved,
   reloaded and giving the same predictions.
4. FSDP (one process): ``accelerate launch --config_file examples/accelerate/fsdp.yaml`` of the same
   run; the saved adapter is complete (gathered before saving) and loads.

Each check records its numbers and ``ok``; a failing check does not stop the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute error relative to the largest expected magnitude."""
    expected = expected.double()
    return float((actual.double() - expected).abs().max() / expected.abs().max().clamp(min=1e-30))


def _attention(q, k, v, fused, bias, bool_mask, causal, scale, weight):
    """Output, LSE and the (q, k, v) gradients of a loss using both, on one attention path."""
    from inducer.core.kernels import additive_mask, fused_attention, reference_attention

    n = k.shape[-2]
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    bias = bias.to(device=q.device, dtype=q.dtype) if bias is not None else None
    bool_mask = bool_mask.to(q.device) if bool_mask is not None else None
    if fused:  # causal masking by the kernel itself, unless a bias forces an explicit mask
        mask = additive_mask(bool_mask, bias, q, n, is_causal=causal and bias is not None)
        out, lse = fused_attention(q, k, v, mask, scale, 0.0, False, causal and bias is None)
    else:
        mask = additive_mask(bool_mask, bias, q, n, is_causal=causal)
        out, lse, _ = reference_attention(q, k, v, mask, scale, 0.0, False)
    loss = (out.float() ** 2).sum() + (lse.float() * weight.to(q.device).float()).sum()
    return out.detach(), lse.detach(), torch.autograd.grad(loss, (q, k, v))


def check_kernels(device: str) -> dict:
    tolerance = {torch.float32: 2e-4, torch.bfloat16: 6e-2}
    rows, ok = [], True
    for p in (5, 12, 64):
        for case in ("none", "padding", "causal", "gqa", "bias"):
            for dtype in (torch.float32, torch.bfloat16):
                heads, kv_heads, n = (6, 2, 37) if case == "gqa" else (4, 4, 37)
                g = torch.Generator(device="cpu").manual_seed(p)
                q64 = torch.randn(2, heads, n, p, generator=g, dtype=torch.float64)
                k64 = torch.randn(2, kv_heads, n, p, generator=g, dtype=torch.float64)
                v64 = torch.randn(2, kv_heads, n, p, generator=g, dtype=torch.float64)
                keep = torch.ones(2, 1, 1, n, dtype=torch.bool)
                if case in ("padding", "gqa", "bias"):
                    keep[1, ..., n - 5 :] = False
                bias = torch.randn(1, heads, n, n, generator=g, dtype=torch.float64)
                bias = bias if case == "bias" else None
                causal = case == "causal"
                bool_mask = keep if case != "none" and case != "causal" else None
                weight = torch.randn(2, heads, n, generator=g, dtype=torch.float64)

                masks = dict(bias=bias, bool_mask=bool_mask, causal=causal, scale=p**-0.5, weight=weight)
                try:
                    ref = _attention(q64.to(device), k64.to(device), v64.to(device), fused=False, **masks)
                    low = (t.to(device=device, dtype=dtype) for t in (q64, k64, v64))
                    got = _attention(*low, fused=True, **masks)
                except Exception as exc:  # noqa: BLE001 - recorded, the other cases go on
                    ok = False
                    rows.append({"head_dim": p, "case": case, "dtype": str(dtype).split(".")[-1],
                                 "error": repr(exc)[:300], "ok": False})
                    continue
                errors = {
                    "out": _rel_err(got[0], ref[0]),
                    "lse": _rel_err(got[1], ref[1]),
                    **{f"grad_{x}": _rel_err(a, b) for x, a, b in zip("qkv", got[2], ref[2], strict=True)},
                }
                passed = all(e <= tolerance[dtype] for e in errors.values())  # NaN fails
                ok &= passed
                rows.append({"head_dim": p, "case": case, "dtype": str(dtype).split(".")[-1],
                             "max_rel_error": max(errors.values()), "errors": errors, "ok": passed})
    return {"ok": ok, "tolerance": {str(k).split(".")[-1]: v for k, v in tolerance.items()}, "rows": rows}


def check_models(device: str) -> dict:
    import inducer
    from tests.conftest import FAMILIES, logits_of, make_batch
    from tests.runtime.test_adapter import VARIANTS, _adapted, _grads

    rows, ok = [], True
    for family in FAMILIES:
        for variant, config in VARIANTS.items():
            try:
                model = _adapted(family, dtype=torch.float32, **config).to(device)
                batch = {k: v.to(device) for k, v in make_batch(family).items()}
                out_f, grads_f = logits_of(model, batch), _grads(model, batch)
                inducer.set_attention_path(model, "reference")
                out_r, grads_r = logits_of(model, batch), _grads(model, batch)
                error = max([_rel_err(out_f, out_r)] + [_rel_err(grads_f[n], grads_r[n]) for n in grads_r])
                passed = error <= 1e-4  # NaN fails
                rows.append({"family": family, "variant": variant, "max_rel_error": error, "ok": passed})
            except Exception as exc:  # noqa: BLE001 - recorded, the other checks go on
                passed = False
                rows.append({"family": family, "variant": variant, "error": repr(exc)[:500], "ok": False})
            ok &= passed
    return {"ok": ok, "tolerance": 1e-4, "rows": rows}


def _cli(args: list[str], launcher: list[str] | None = None, timeout: int = 240) -> dict:
    command = (launcher or [sys.executable]) + ["-m", "inducer", *args]
    started = time.perf_counter()
    paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]  # keep the carried packages
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    return {
        "command": " ".join(command),
        "returncode": result.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "tail": (result.stdout + result.stderr)[-1500:],
    }


def _reloaded_predictions(model_dir: Path, adapter: Path) -> tuple[torch.Tensor, dict]:
    from transformers import AutoModelForSequenceClassification

    import inducer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    inducer.load_adapter(model, adapter)
    ids = torch.arange(6, 20).reshape(2, 7)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    from safetensors.torch import load_file

    from inducer.io.adapter_format import weights_path

    tensors = load_file(weights_path(adapter))
    return logits, {"tensors": len(tensors), "empty": [n for n, t in tensors.items() if t.numel() == 0]}


def check_training(work: Path, fsdp: bool = True) -> dict:
    from tests.tiny import save_tiny, task_dir

    model_dir = save_tiny("bert", work / "bert")
    common = ["train", "--model", str(model_dir), "--task", "sst2", "--data-dir", task_dir("sst2"),
              "--method", "inducer", "--max-steps", "20", "--batch-size", "8", "--lr", "5e-3", "-q"]
    report = {}
    bf16 = _cli([*common, "--precision", "bf16", "--output", str(work / "bf16")])
    report["bf16"] = bf16
    ok = bf16["returncode"] == 0
    if ok:
        metrics = [json.loads(x) for x in (work / "bf16" / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in metrics if r["split"] == "train"]
        logits, info = _reloaded_predictions(model_dir, work / "bf16" / "last")
        bf16.update(train_losses=losses, reloaded=info, finite=bool(torch.isfinite(logits).all()))
        ok = all(map(lambda x: x == x and abs(x) < 1e4, losses)) and not info["empty"] and bf16["finite"]
    report["bf16"]["ok"] = ok
    if not fsdp:
        report["ok"] = ok
        return report
    fsdp_launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                   str(ROOT / "examples/accelerate/fsdp.yaml"), "--num_processes", "1"]
    if not Path(fsdp_launch[0]).exists():
        fsdp_launch = [sys.executable, "-m", "accelerate.commands.launch", *fsdp_launch[2:]]
    fsdp = _cli([*common, "--output", str(work / "fsdp")], launcher=fsdp_launch)
    fsdp_ok = fsdp["returncode"] == 0
    if fsdp_ok:
        try:
            _, info = _reloaded_predictions(model_dir, work / "fsdp" / "last")
            fsdp["reloaded"] = info
            fsdp_ok = not info["empty"] and info["tensors"] > 0
        except Exception as exc:  # noqa: BLE001 - recorded with the bf16 result kept
            fsdp["reload_error"], fsdp_ok = repr(exc)[:600], False
    fsdp["ok"] = fsdp_ok
    report["fsdp_one_process"] = fsdp
    report["ok"] = ok and fsdp_ok
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_check.json")
    parser.add_argument("--checks", nargs="+", default=["kernels", "models", "training"])
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (no FSDP)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device")
    import transformers

    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "none (cpu dry run)",
                    "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.version.cuda,
                    "transformers": transformers.__version__},
        "checks": {},
    }
    functions = {"kernels": lambda: check_kernels(args.device), "models": lambda: check_models(args.device),
                 "training": lambda: check_training(Path(tempfile.mkdtemp()), fsdp=args.device == "cuda")}
    for name in args.checks:
        started = time.perf_counter()
        try:
            result = functions[name]()
        except Exception:  # noqa: BLE001 - recorded, the other checks go on
            result = {"ok": False, "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["checks"][name] = result
        print(f"{name}: ok={result['ok']} ({result['seconds']} s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    report["ok"] = all(c["ok"] for c in report["checks"].values())
    args.out.write_text(json.dumps(report, indent=2))
    print("all ok" if report["ok"] else "SOME CHECKS FAILED", flush=True)


if __name__ == "__main__":
    main()
