"""Several seeds of ``quality_nlg.py``, side by side: mean ± std per method and paired comparisons.

Each input is a ``quality_nlg.json`` of one seed (``--seed``; any methods, same protocol otherwise).
A method's row collects its runs over seeds at one learning rate; the paired comparisons (t
interval, p-value, bootstrap interval over seeds: :mod:`lib.stats`) use the seeds both sides ran.
Validation loss is the selection criterion (lower is better), so its differences are reported as
``b − a`` ("how much lower a's loss is"); the test metrics as ``a − b`` (TER: lower is better).

    python benchmarks/quality_nlg_seeds.py RUN.json [RUN.json ...] --compare inducer-init-lora:inducer \\
        --compare inducer:lora --out benchmarks/results/quality_nlg_seeds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.formatting import mean_std, pm, table
from lib.stats import describe, paired, verdict

METRICS = (("bleu", "BLEU", True), ("nist", "NIST", True), ("rougeL", "ROUGE-L", True), ("ter", "TER", False))
LOSS_STEPS = (10, 25, 50, 100, 150)


def _loss_at(row: dict, step: int) -> float | None:
    # Mean logged training loss over the last few logged steps up to ``step`` (smooths batch noise).
    logged = [loss for s, loss in row.get("train_loss_log", []) if s <= step]
    return sum(logged[-3:]) / len(logged[-3:]) if logged else None


def collect(paths: list[Path]) -> dict[tuple[str, float], dict[int, dict]]:
    """(method, lr) -> {seed: row} over every input file; a (method, lr, seed) seen twice is an error."""
    runs: dict[tuple[str, float], dict[int, dict]] = {}
    for path in paths:
        report = json.loads(path.read_text())
        seed = report["protocol"]["seed"]
        for row in report["methods"]:
            if row.get("lr") is None or "validation" not in row:
                continue  # zero-shot or a failed run
            by_seed = runs.setdefault((row["method"], row["lr"]), {})
            if seed in by_seed:
                raise SystemExit(f"{path}: {row['method']} at lr {row['lr']} seed {seed} is in two inputs")
            by_seed[seed] = {**row, "source": str(path), "command": report["environment"]["command"]}
    return runs


def _value(row: dict, key: str) -> float | None:
    return row["validation"]["loss"] if key == "val_loss" else row.get("metrics", {}).get(key)


def choose_lrs(runs: dict) -> dict[str, tuple[float, bool]]:
    """Each method's learning rate, and whether it is at an edge of the rates tried (with several).

    Chosen like the NLU study: on the validation loss of the smallest seed that every rate of the
    method ran (so seeds added later at one rate do not tilt the choice); without such a seed, on the
    mean over seeds."""
    chosen = {}
    for method in sorted({m for m, _ in runs}):
        rates = sorted(lr for m, lr in runs if m == method)
        common = set.intersection(*(set(runs[(method, lr)]) for lr in rates))

        def loss(lr, common=common, method=method):
            by_seed = runs[(method, lr)]
            if common:
                return by_seed[min(common)]["validation"]["loss"]
            return mean_std(r["validation"]["loss"] for r in by_seed.values())[0]

        lr = min(rates, key=loss)
        chosen[method] = (lr, len(rates) > 1 and lr in (rates[0], rates[-1]))
    return chosen


def summarise(runs: dict, compare: list[tuple[str, str]], pinned: dict[str, float] | None = None) -> dict:
    """Rows (mean ± std per metric) and the paired comparisons, as plain JSON. ``pinned``: rates the
    comparisons use instead of the chosen ones (when the chosen one has too few seeds)."""
    rows = []
    for (method, lr), by_seed in sorted(runs.items()):
        row = {"method": method, "lr": lr, "seeds": sorted(by_seed),
               "parameters": next(iter(by_seed.values()))["parameters"]}
        for key in ("val_loss", *(m for m, _, _ in METRICS)):
            row[key] = mean_std(_value(r, key) for r in by_seed.values())
        row["loss_at"] = {step: mean_std(_loss_at(r, step) for r in by_seed.values()) for step in LOSS_STEPS}
        rows.append(row)
    best = choose_lrs(runs)
    for row in rows:
        row["chosen"] = best[row["method"]][0] == row["lr"]
        row["edge"] = row["chosen"] and best[row["method"]][1]
        row["compared"] = (pinned or {}).get(row["method"], best[row["method"]][0]) == row["lr"]
    for method, lr in (pinned or {}).items():
        if (method, lr) not in runs:
            raise SystemExit(f"--compare-lr {method}={lr:g}: no runs of {method} at that rate")
        best[method] = (lr, False)
    comparisons = []
    for a, b in compare:
        if a not in best or b not in best:
            raise SystemExit(f"--compare {a}:{b}: no runs of {a if a not in best else b}")
        runs_a, runs_b = runs[(a, best[a][0])], runs[(b, best[b][0])]
        entry = {"a": a, "b": b, "lr_a": best[a][0], "lr_b": best[b][0]}
        for key, higher_better in (("val_loss", False), *((m, hb) for m, _, hb in METRICS)):
            sa = {s: _value(r, key) for s, r in runs_a.items()}
            sb = {s: _value(r, key) for s, r in runs_b.items()}
            result = paired(sa, sb) if higher_better else paired(sb, sa)  # positive: a is better
            entry[key] = {"result": None if result is None else result.to_dict(),
                          "text": describe(result, 3 if key == "val_loss" else 2), "verdict": verdict(result)}
        comparisons.append(entry)
    return {"rows": rows, "comparisons": comparisons}


def render(report: dict) -> str:
    """The markdown of a summary."""
    lines = ["# Generation quality over seeds: SmolLM2-135M x e2e-synthetic", "",
             f"Made by `{report['command']}` from:", ""]
    lines += [f"- `{command}`" for command in report["inputs"]]
    lines += ["", "Protocol of each run: " + report["protocol_note"], "",
              "## Mean ± std over seeds (test split; validation loss on 60 validation rows)", ""]
    lines += ["The rate each comparison uses is marked *chosen* (lowest validation loss on the first seed "
              "all of the method's rates ran), *edge* when it is the lowest or highest rate tried, and "
              "*compared* where the comparisons use another rate (given with --compare-lr: the chosen one "
              "ran too few seeds).", ""]
    header = ["method", "lr", "seeds", "parameters", "val loss", *(name for _, name, _ in METRICS)]
    marks = {(False, False): "", (True, False): " chosen", (True, True): " chosen, edge"}

    def mark(r):
        compared = " compared" if r.get("compared", r["chosen"]) and not r["chosen"] else ""
        return marks[(r["chosen"], bool(r["edge"]))] + compared

    body = [[r["method"], f"{r['lr']:g}" + mark(r),
             ",".join(map(str, r["seeds"])), f"{r['parameters']:,}",
             pm(*r["val_loss"], digits=3), *(pm(*r[key]) for key, _, _ in METRICS)] for r in report["rows"]]
    lines += table(header, body, "lrlrrrrrr")
    lines += ["", "## Training loss early on", "",
              "Mean over seeds of the last 3 logged losses up to the step.", ""]
    header = ["method", "lr", *(f"loss @{s}" for s in LOSS_STEPS)]
    # Keys are ints in memory and strings once read back from the JSON.
    body = [[r["method"], f"{r['lr']:g}", *(pm(*(r["loss_at"].get(s) or r["loss_at"][str(s)]), digits=3)
                                             for s in LOSS_STEPS)] for r in report["rows"]]
    lines += table(header, body, "lr" + "r" * len(LOSS_STEPS))
    lines += ["", "## Paired comparisons over seeds (a vs b; positive: a is better)", "",
              "Each cell: mean difference [95% t interval], p (paired t-test), seeds a won; then the verdict "
              "(wins / loses when the interval excludes 0, else ties). Validation loss: b − a; BLEU, NIST, "
              "ROUGE-L: a − b; TER: b − a.", ""]
    keys = ("val_loss", *(m for m, _, _ in METRICS))
    header = ["a", "b", "val loss", *(name for _, name, _ in METRICS)]
    body = [[f"{c['a']} ({c['lr_a']:g})", f"{c['b']} ({c['lr_b']:g})",
             *(f"{c[k]['text']} **{c[k]['verdict']}**" for k in keys)] for c in report["comparisons"]]
    lines += table(header, body, "ll" + "l" * len(keys))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="quality_nlg.json files, one seed each")
    parser.add_argument("--compare", action="append", default=[], metavar="A:B",
                        help="a paired comparison of method A with method B (repeatable)")
    parser.add_argument("--compare-lr", action="append", default=[], metavar="METHOD=LR",
                        help="compare METHOD at this rate instead of its chosen one (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    compare = []
    for item in args.compare:
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            parser.error(f"--compare takes METHOD_A:METHOD_B, got {item!r}")
        compare.append((a, b))
    missing = [str(p) for p in args.inputs if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    pinned = {}
    for item in args.compare_lr:
        method, sep, lr = item.partition("=")
        try:
            pinned[method] = float(lr)
        except ValueError:
            parser.error(f"--compare-lr takes METHOD=LR, got {item!r}")
        if not sep or not method:
            parser.error(f"--compare-lr takes METHOD=LR, got {item!r}")
    runs = collect(args.inputs)
    report = summarise(runs, compare, pinned)
    first = json.loads(args.inputs[0].read_text())
    report["command"] = "python benchmarks/quality_nlg_seeds.py " + " ".join(
        [str(p) for p in args.inputs] + [f"--compare {a}:{b}" for a, b in compare]
        + [f"--compare-lr {item}" for item in args.compare_lr] + [f"--out {args.out}"])
    report["inputs"] = sorted({r["command"] for by_seed in runs.values() for r in by_seed.values()})
    report["protocol_note"] = " ".join(first["protocol"]["description"])
    report["environment"] = first["environment"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", render(report))):
        target = args.out.with_suffix(suffix)
        temporary = target.with_suffix(suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(target)  # atomic: a kill never leaves half a file
    print(render(report))
    return report


if __name__ == "__main__":
    main()
