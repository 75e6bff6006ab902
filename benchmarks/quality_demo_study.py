"""Issue 27's study at the demo's scale: inducer's initialisation and optimisation against LoRA.

Every run is the demo's run (``inducer.app.demo.demo_spec``: MiniLM x vader-movies, 2,000 training
sentences, 125 steps at batch 16, length 64, weight decay 0.01, warmup 6%, budget 0.5%, the whole
validation and test splits) with validation every ``--eval-every`` steps instead of 3 times, one
candidate, one learning rate and one seed, trained by ``inducer.app.experiment.train_run``. The protocol is
``benchmarks/quality_demo_study.md``.

A candidate is a method name followed by comma-separated changes: ``InducerConfig`` fields (``init``,
``b_lr_ratio``), ``TrainConfig`` fields (``warmup_ratio``), or ``lr.SUFFIX=k``: every trainable tensor
whose name ends with SUFFIX trains at k x the rate (its ``lr_scale``, read by the optimizer; k = 0
freezes it: a diagnostic, not a candidate), e.g. ``inducer,init=lora-value,b_lr_ratio=4``. A job is
``CANDIDATE@LR@SEED``.

    python benchmarks/quality_demo_study.py run --runs R.jsonl 'lora@3e-3@0' 'inducer,init=lora@3e-3@0'
    python benchmarks/quality_demo_study.py report --runs R.jsonl --out OUT_PREFIX \\
        --compare 'inducer,init=lora@3e-3:lora@3e-3'

``run`` appends one JSON line per finished job (a job already in the file is skipped); ``report``
writes ``OUT.json``, ``OUT.md`` and ``OUT.png`` (validation learning curves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from lib.runs import LossCurve
from lib.stamp import environment
from lib.stats import describe, verdict
from lib.stats import paired as paired_stats

TRAIN_FIELDS = ("warmup_ratio", "warmup_steps", "weight_decay")
# The demo evaluates at steps 42, 84, 125; the study's evaluation nearest its first one is step 40.
DEMO_FIRST_EVAL = 40
_CACHE: dict = {}


def parse_candidate(candidate: str) -> tuple[str, dict, dict, dict]:
    """``"inducer,init=lora,warmup_ratio=0.2,lr.value_b_bias=0.1"`` -> ("inducer", method changes,
    training changes, rate scales by tensor-name suffix)."""
    method, *changes = candidate.split(",")
    method_changes, train_changes, scales = {}, {}, {}
    for change in changes:
        key, _, text = change.partition("=")
        try:
            value: object = int(text) if text.isdigit() else float(text)
        except ValueError:
            value = text
        if key.startswith("lr."):
            scales[key[3:]] = float(value)
        else:
            (train_changes if key in TRAIN_FIELDS else method_changes)[key] = value
    return method, method_changes, train_changes, scales


def parse_job(job: str) -> tuple[str, float, int]:
    candidate, lr, seed = job.rsplit("@", 2)
    return candidate, float(lr), int(seed)


def job_key(candidate: str, lr: float, seed: int) -> str:
    return f"{candidate}@{lr:g}@{seed}"


def _preset_configs(method: str) -> list:
    """The method's configs at the demo's budget (sized once per process on the bare model)."""
    if method not in _CACHE:
        from inducer.data.base_models import load_model
        from inducer.sizing.presets import preset

        _CACHE[method] = list(preset(method, load_model("minilm", "classification", 2).model, "0.5%"))
    return _CACHE[method]


def run_job(candidate: str, lr: float, seed: int, eval_every: int) -> dict:
    """One demo-scale run; returns its row (validation history, best validation, test)."""
    from inducer.app.demo import demo_spec
    from inducer.app.experiment import build, train_run

    method, method_changes, train_changes, scales = parse_candidate(candidate)
    configs = [dataclasses.replace(c, **method_changes) for c in _preset_configs(method)]
    spec = demo_spec("unused", methods=[method], progress=False)
    spec.output = None  # nothing written: the row below is the record
    spec.config = dataclasses.replace(spec.config, lr=lr, seed=seed, eval_every=eval_every, log_every=5,
                                      **train_changes)
    spec.explicit_configs = {method: configs}
    if "task" not in _CACHE:
        _CACHE["task"] = spec.source.load()
    started = time.time()
    # The model is built as train_run would (same seed, same draws), so the scales can be set on it.
    loaded, _ = build("minilm", _CACHE["task"], method, None, seed, True, None, {method: configs})
    for name, tensor in loaded.model.named_parameters():
        for suffix, scale in scales.items():
            if tensor.requires_grad and name.endswith(suffix):
                tensor.lr_scale = getattr(tensor, "lr_scale", 1.0) * scale
    curve = LossCurve()
    result = train_run(spec, task=_CACHE["task"], callbacks=[curve], loaded=loaded)
    metric = result["select_metric"]
    return {
        "job": job_key(candidate, lr, seed), "candidate": candidate, "lr": lr, "seed": seed,
        "method": method, "method_changes": method_changes, "train_changes": train_changes,
        "lr_scales": scales,
        "parameters": result["parameters"], "select_metric": metric,
        "validation": result["best_validation"], "best_step": result["best_step"],
        "test": result["test"]["test"].get(metric), "steps": result["steps"],
        "history": [[h["step"], h.get(metric)] for h in result["history"]], "loss_curve": curve.points,
        "train_seconds": round(result["train_seconds"], 1), "wall_seconds": round(time.time() - started, 1),
        "warmup_ratio": spec.config.warmup_ratio, "eval_every": eval_every,
    }


def read_runs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cmd_run(args) -> None:
    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    done = {r["job"] for r in read_runs(args.runs)}
    for text in args.jobs:
        candidate, lr, seed = parse_job(text)
        key = job_key(candidate, lr, seed)
        if key in done:
            print(f"skip {key} (in {args.runs})", flush=True)
            continue
        row = run_job(candidate, lr, seed, args.eval_every)
        row["command"] = "python " + " ".join(sys.argv)
        with args.runs.open("a") as f:
            f.write(json.dumps(row) + "\n")
        first = row["history"][0] if row["history"] else None
        print(f"{key}: val {row['validation']:.4f} @ {row['best_step']}, test {row['test']:.4f}, first eval "
              f"{first}, {row['wall_seconds']:.0f} s", flush=True)


# --- report ---------------------------------------------------------------------------------------


def cells(runs: list[dict]) -> dict[tuple[str, float], dict[int, dict]]:
    """(candidate, lr) -> seed -> run (the last one written wins)."""
    out: dict[tuple[str, float], dict[int, dict]] = {}
    for r in runs:
        out.setdefault((r["candidate"], r["lr"]), {})[r["seed"]] = r
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summary_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for (candidate, lr), by_seed in sorted(cells(runs).items()):
        rs = list(by_seed.values())
        val, test = [r["validation"] for r in rs], [r["test"] for r in rs]
        first = [r["history"][0][1] for r in rs if r["history"]]
        at40 = [v for r in rs for step, v in r["history"] if step == DEMO_FIRST_EVAL]
        rows.append({"candidate": candidate, "lr": lr, "seeds": sorted(by_seed), "n": len(rs),
                     "validation": _mean(val), "validation_sd": _sd(val), "test": _mean(test),
                     "test_sd": _sd(test),
                     "first_eval_step": rs[0]["history"][0][0] if rs[0]["history"] else None,
                     "first_eval": _mean(first), "first_eval_sd": _sd(first),
                     "val_at_40": _mean(at40), "val_at_40_sd": _sd(at40)})
    return rows


def paired(runs: list[dict], a: tuple[str, float], b: tuple[str, float]) -> dict:
    """a - b over the seeds both ran (accuracy points): test, best validation, validation at the first
    evaluation; each a 95% paired-t interval and a paired bootstrap one (``lib.stats.paired``)."""
    table = cells(runs)
    out = {"a": f"{a[0]}@{a[1]:g}", "b": f"{b[0]}@{b[1]:g}",
           "seeds": sorted(set(table.get(a, {})) & set(table.get(b, {})))}
    for split, get in (("test", lambda r: r["test"]), ("validation", lambda r: r["validation"]),
                       ("first_eval", lambda r: r["history"][0][1]),
                       ("val_at_40", lambda r: dict(map(tuple, r["history"]))[DEMO_FIRST_EVAL])):
        scores = [{s: get(r) for s, r in table.get(key, {}).items()} for key in (a, b)]
        result = paired_stats(*scores)
        out[split] = {"cell": describe(result), "verdict": verdict(result),
                      **(result.to_dict() if result else {})}
    return out


def render(report: dict) -> str:
    lines = [f"# {report['title']}", "", report["environment_line"], "", "Commands:", ""]
    lines += [f"- `{c}`" for c in report["commands"]]
    lines += ["", report["protocol"], "", "## Every cell (accuracy %, mean ± sample std over seeds)", "",
              "| candidate | lr | seeds | val @ first eval | val @ 40 | best val | test |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| `{r['candidate']}` | {r['lr']:g} | {','.join(map(str, r['seeds']))} | "
                     f"{r['first_eval']:.2f} ± {r['first_eval_sd']:.2f} (step {r['first_eval_step']}) | "
                     f"{r['val_at_40']:.2f} ± {r['val_at_40_sd']:.2f} | "
                     f"{r['validation']:.2f} ± {r['validation_sd']:.2f} | "
                     f"{r['test']:.2f} ± {r['test_sd']:.2f} |")
    if report["comparisons"]:
        lines += ["", "## Paired comparisons", "",
                  "a − b in accuracy points: mean [95% paired-t interval], p, seeds a won; verdict.", "",
                  "| a | b | seeds | test | best validation | validation at step 10 (first) | at step 40 |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for c in report["comparisons"]:
            splits = ("test", "validation", "first_eval", "val_at_40")
            lines.append(f"| `{c['a']}` | `{c['b']}` | {len(c['seeds'])} | " + " | ".join(
                f"{c[k]['cell']} **{c[k]['verdict']}**" for k in splits) + " |")
    return "\n".join(lines + [""] + report.get("notes", []) + [""])


Panel = tuple[str, list[tuple[str, float]], list[int] | None]


def plot(runs: list[dict], panels: list[Panel], path: Path) -> None:
    """One panel per (title, cells, seeds or None = every seed): validation accuracy against step,
    the mean over the seeds of each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = cells(runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (title, keys, seeds) in zip(axes[0], panels, strict=True):
        for key in keys:
            by_seed = {s: r for s, r in table.get(key, {}).items() if seeds is None or s in seeds}
            steps = sorted({s for r in by_seed.values() for s, _ in r["history"]})
            means = [_mean([v for r in by_seed.values() for s, v in r["history"] if s == step])
                     for step in steps]
            ax.plot(steps, means, marker="o", ms=3, label=f"{key[0]} @ {key[1]:g} ({len(by_seed)} seeds)")
        ax.axhline(50.71, color="grey", lw=0.8, ls=":", label="majority class (50.71)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation accuracy (%), mean over seeds")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("MiniLM x vader-movies at the demo's scale (2,000 sentences, 125 steps, 0.5%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _key(text: str) -> tuple[str, float]:
    candidate, lr = text.rsplit("@", 1)
    return candidate, float(lr)


def cmd_report(args) -> None:
    runs = [r for path in args.runs_files for r in read_runs(path)]
    comparisons = [paired(runs, *map(_key, c.split(":"))) for c in args.compare]
    env = environment()
    report = {
        "title": args.title, "environment": env,
        "environment_line": (f"{env.get('date_utc')}, torch {env.get('torch')}, transformers "
                             f"{env.get('transformers')}, {env.get('cpu_count')} CPU cores, "
                             f"1 torch thread per run, "
                             f"git {str(env.get('git_commit', ''))[:10]}."),
        "commands": sorted({r["command"] for r in runs}) + ["python " + " ".join(sys.argv)],
        "protocol": ("Protocol: `benchmarks/quality_demo_study.md`. Selection on validation only; test is "
                     "the model at its best validation step."),
        "rows": summary_rows(runs), "comparisons": comparisons, "runs": runs,
        "notes": (args.note or []) + ([args.notes_file.read_text()] if args.notes_file else []),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(render(report))
    panels = []
    if args.plot:
        panels.append(("final comparison: mean over seeds", [_key(k) for k in args.plot], None))
    if args.plot_screen:
        panels.append(("screening: seed 0", [_key(k) for k in args.plot_screen], [0]))
    if panels:
        plot(runs, panels, args.out.with_suffix(".png"))
    print(render(report))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("jobs", nargs="+", help="CANDIDATE@LR@SEED")
    run.add_argument("--runs", type=Path, required=True, help="JSON lines file to append to")
    run.add_argument("--eval-every", type=int, default=10)
    run.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("report")
    rep.add_argument("--runs", dest="runs_files", type=Path, nargs="+", required=True)
    rep.add_argument("--out", type=Path, required=True, help="path prefix: OUT.json, OUT.md, OUT.png")
    rep.add_argument("--compare", action="append", default=[], help="CAND@LR:CAND@LR (a - b)")
    rep.add_argument("--plot", action="append", default=[], help="CAND@LR to draw, mean over seeds")
    rep.add_argument("--plot-screen", action="append", default=[], help="CAND@LR to draw, seed 0 only")
    rep.add_argument("--note", action="append", help="a paragraph appended to the markdown")
    rep.add_argument("--notes-file", type=Path, help="markdown appended after the tables")
    rep.add_argument("--title", default="Issue 27: inducer vs LoRA at the demo's scale")
    args = parser.parse_args(argv)
    (cmd_run if args.command == "run" else cmd_report)(args)


if __name__ == "__main__":
    main()
