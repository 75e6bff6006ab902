"""Write the docs' Results page (and the README's headline table) from the committed results files.

    python benchmarks/report.py            # rewrites docs/results.md and README.md between their markers
    python benchmarks/report.py --print    # prints the results section instead

Every table is built from a JSON file in ``benchmarks/results/`` and names the command, machine and
date recorded in it; nothing here is typed in by hand. A missing file leaves its part out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.formatting import pm  # noqa: E402
from quality_nlg_seeds import render as render_nlg_seeds  # noqa: E402
from quality_nlu import comparison_section, init_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start (benchmarks/report.py) -->", "<!-- results:end -->"
HEADLINE_START, HEADLINE_END = "<!-- headline:start (benchmarks/report.py) -->", "<!-- headline:end -->"
# The README's one table: the methods a newcomer compares, from the NLU study at 0.5%.
HEADLINE_METHODS = ("full", "prefix", "peft-prefix", "lora", "peft-lora", "inducer", "inducer+lora",
                    "inducer+mam")


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _pm(mean, std, n=None) -> str:
    # One seed has no spread to show.
    return pm(mean, None if n == 1 else std, n)


def _nlu(data: dict) -> list[str]:
    env, rows = data["environment"], data["results"]["rows"]
    protocol = data["protocol"]
    lines = [
        "### NLU: MiniLM × vader-movies (SST-2 stand-in)",
        "",
        f"`{env['command']}` on {env['device_name']} ({env['date'][:10]}; torch {env['torch']}, "
        f"transformers {env['transformers']}, peft {env['peft']}); {data.get('completion', '')}",
        f"{protocol['epochs']:g} epochs, batch {protocol['batch_size']}, the full train split (8,457 "
        "sentences); each method's learning rate picked on the dev split from a 3-value grid (seed 0); "
        "test accuracy (%) at the best dev step, mean ± std over seeds (n). The base is all-MiniLM-L6-v2 "
        "with its weights rounded to float16 to fit the GPU machine's upload limit (computation in "
        "float32). Full tables: [`benchmarks/results/quality_nlu.md`](benchmarks/results/quality_nlu.md).",
        "",
    ]
    for budget, title in (("0.5%", "budget ≈ 0.5% of the base"), ("0.1%", "budget ≈ 0.1%")):
        chosen = [r for r in rows if r["budget"] == budget and r["stage"] == "1-2"]
        if not chosen:
            continue
        lines += [
            f"**{title}** (task head trained, not counted)",
            "",
            "| method | parameters | % of base | lr (grid) | dev | test |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for r in chosen:
            grid = "/".join(
                f"{x:g}" for x in r["lr_grid"] if f"{x:g}" in {f"{float(k):g}" for k in r["lr_dev"]}
            )
            edge = " edge" if r.get("chosen_at_grid_edge") else ""
            lines.append(
                f"| {r['config']} | {r['parameters']:,} | {r['percent_of_base']:.3f}% | "
                f"{r['chosen_lr']:g} ({grid}){edge} | {_pm(r['dev_mean'], r['dev_std'])} | "
                f"{_pm(r['test_mean'], r['test_std'], r['n_seeds'])} |"
            )
        lines.append("")
    variants = [r for r in rows if r["stage"] in ("3", "3b")]
    if variants:
        lines += [
            "**Initialisation and ablations** (0.5%, each at its method's chosen learning rate)",
            "",
            "| variant | parameters | lr | test |",
            "|---|---:|---:|---:|",
        ]
        lookup = {(r["config"], r["budget"]): r for r in rows if r["stage"] == "1-2"}
        for name, source in (("prefix (random init)", "prefix"), ("inducer", "inducer")):
            r = lookup.get((source, "0.5%"))
            if r:
                lines.append(
                    f"| {name} | {r['parameters']:,} | {r['chosen_lr']:g} | "
                    f"{_pm(r['test_mean'], r['test_std'], r['n_seeds'])} |"
                )
        for r in variants:
            lines.append(
                f"| {r['config']} | {r['parameters']:,} | {r['chosen_lr']:g} | "
                f"{_pm(r['test_mean'], r['test_std'], r['n_seeds'])} |"
            )
        lines.append("")
    lines += [
        "![training loss of prefix-tuning inits vs inducer](benchmarks/results/quality_nlu_loss.png)",
        "![λ per layer and head](benchmarks/results/quality_nlu_lambda.png)",
        "",
    ]
    return lines


def _nlg(data: dict) -> list[str]:
    env, protocol = data["environment"], data["protocol"]
    names = [
        ("bleu", "BLEU"),
        ("nist", "NIST"),
        ("meteor", "METEOR"),
        ("rougeL", "ROUGE-L"),
        ("cider", "CIDEr"),
        ("ter", "TER"),
    ]
    commands = data.get("merged_from") or [env["command"]]
    lr = (
        "learning rate per method from the " + data["lr_selection"].replace("; ", " (") + ")"
        if data.get("lr_selection")
        else f"lr {protocol['lr']:g}"
    )
    lines = [
        "### NLG: SmolLM2-135M × e2e-synthetic",
        "",
        " + ".join(f"`{c}`" for c in commands) + f" on a {env.get('cpu_count')}-core CPU "
        f"({env['date_utc'][:10]}, {env.get('torch_threads')} thread); {protocol['steps']} optimizer "
        f"steps of batch {protocol['batch_size']}, one seed, {lr}, budget {protocol['budget']:,} "
        "parameters; greedy decoding on the test split (TER: lower is better). Details, every run "
        "and samples: [`benchmarks/results/quality_nlg.md`](benchmarks/results/quality_nlg.md).",
        "",
        "| method | parameters | % of base | lr | " + " | ".join(n for _, n in names) + " | train s |",
        "|---|---:|---:|---:|" + "---:|" * len(names) + "---:|",
    ]
    for m in data["methods"]:
        if "metrics" not in m:
            continue
        values = " | ".join(f"{m['metrics'][k]:.2f}" if k in m["metrics"] else "n/a" for k, _ in names)
        rate = f"{m['lr']:g}" if m.get("lr") is not None else "-"
        lines.append(
            f"| {m['method']} | {m['parameters']:,} | {m['percent_of_base']:.3f}% | {rate} | {values} | "
            f"{m['train_seconds']:.0f} |"
        )
    return lines + [""]


def _cost(data: dict, title: str) -> list[str]:
    env, settings = data["environment"], data["settings"]
    lines = [
        f"### {title}",
        "",
        f"`{env['command']}` ({env['date_utc'][:10]}, {settings['device']}, {settings['dtype']}, batch "
        f"{settings['batch']}, random weights with the real geometry). Step time relative to the frozen "
        "base's floor (medians of interleaved rounds); details: "
        f"[`benchmarks/results/{data['_file']}.md`](benchmarks/results/{data['_file']}.md).",
        "",
    ]
    for model in settings["models"]:
        rows = [r for r in data["training"] if r["model"] == model and r["status"] == "ok"]
        lengths = sorted({r["length"] for r in rows})
        if not lengths:
            continue
        methods = [m for m in settings["methods"] if m != "floor"]
        lines += [
            f"{model}: step time ÷ floor (floor ms in the first row)",
            "",
            "| method | " + " | ".join(f"L={n}" for n in lengths) + " |",
            "|---|" + "---:|" * len(lengths),
        ]
        cell = {(r["method"], r["length"]): r for r in rows}
        floor = [cell.get(("floor", n)) for n in lengths]
        lines.append(
            "| floor (ms) | " + " | ".join(f"{r['median_s'] * 1000:.0f}" if r else "" for r in floor) + " |"
        )
        for method in methods:
            values = [cell.get((method, n)) for n in lengths]
            if not any(values):
                continue
            lines.append(
                f"| {method} | "
                + " | ".join(
                    f"{r['time_ratio_to_floor']:.2f}" if r and "time_ratio_to_floor" in r else ""
                    for r in values
                )
                + " |"
            )
        lines.append("")
    generation = [g for g in data.get("generation", []) if g.get("status") == "ok"]
    if generation and settings.get("gen_repeats", 0) < 3:  # one timed pass is noise, not a result
        lines += [f"(Generation latency was timed {settings.get('gen_repeats')} time(s) here: left out.)", ""]
        generation = []
    if generation:
        lines += [
            "Cached generation (SmolLM2 shape), ms per new token (ratio to the base model):",
            "",
            "| method | " + " | ".join(f"batch {b}" for b in sorted({g["batch"] for g in generation})) + " |",
            "|---|" + "---:|" * len({g["batch"] for g in generation}),
        ]
        for method in dict.fromkeys(g["method"] for g in generation):
            cells = []
            for batch in sorted({g["batch"] for g in generation}):
                g = next((g for g in generation if g["method"] == method and g["batch"] == batch), None)
                ratio = (
                    f" ({g['per_token_ratio_to_base']:.2f})" if g and "per_token_ratio_to_base" in g else ""
                )
                cells.append(f"{g['median_per_token_s'] * 1000:.1f}{ratio}" if g else "")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _gpu_check(data: dict) -> list[str]:
    machine, checks = data["machine"], data["checks"]
    lines = [
        "### GPU check",
        "",
        f"`{data['command']}` on {machine['gpu']} (torch {machine['torch']}, "
        f"{data['date'][:10]}); [`benchmarks/results/gpu_check.json`](benchmarks/results/gpu_check.json).",
        "",
    ]
    kernels = checks.get("kernels", {}).get("rows", [])
    for dtype in ("float32", "bfloat16"):
        rows = [r for r in kernels if r.get("dtype") == dtype]
        if rows:
            passed = sum(r["ok"] for r in rows)
            lines.append(
                f"- fused kernel vs float64 reference, {dtype}: {passed}/{len(rows)} cases within tolerance"
            )
    models = checks.get("models", {}).get("rows", [])
    if models:
        lines.append(
            f"- models (fused vs reference path, float32): {sum(r['ok'] for r in models)}/{len(models)} "
            "family × variant pairs within tolerance"
        )
    return lines + [""]


def _study(data: dict, title: str, note: str, file: str, show_rows: bool = True) -> list[str]:
    """A side study of quality_nlu (its own protocol): command, per-config rows, paired comparisons,
    and for the init study its early-training table."""
    env, protocol, results = data["environment"], data["protocol"], data["results"]
    lines = [
        f"### {title}",
        "",
        f"`{env['command']}` on {env.get('device_name')} ({str(env.get('date'))[:10]}); "
        f"{protocol['epochs']:g} epoch(s), batch {protocol['batch_size']}, seeds {protocol['seeds']}. {note} "
        f"Full tables: [`benchmarks/results/{file}.md`](benchmarks/results/{file}.md).",
    ]
    if show_rows:
        lines += ["", "| config | lr | dev | test |", "|---|---:|---:|---:|"]
    for r in results["rows"] if show_rows else []:
        lines.append(f"| {r['config']} | {r['chosen_lr']:g} | {_pm(r['dev_mean'], r['dev_std'])} | "
                     f"{_pm(r['test_mean'], r['test_std'], r['n_seeds'])} |")
    sections = init_section(results["rows"], results.get("loss_curves") or {})
    sections += comparison_section(results.get("comparisons") or [])
    # The scripts' own "##" headings sit under this "###" one in the results page.
    lines += [("#### " + line[3:]) if line.startswith("## ") else line for line in sections]
    return lines + [""]


STUDIES = (
    ("quality_nlu_paired", "NLU: paired comparisons over seeds (the runs of the table above)",
     "The same runs as the NLU table, compared seed by seed."),
    ("quality_nlu_init", "NLU: inducer-tuning's initialisation (issue 16)",
     "Paper init vs LoRA-style init at inducer's rate, same seeds; a short run to see the first steps."),
)


def _prefix_vs_peft(data: dict) -> list[str]:
    """Our prefix-tuning against PEFT's, from the NLU runs: validation per learning rate (seed 0) and
    every seed's test accuracy at each one's chosen rate, with runs stuck at chance marked."""
    rows = {r["config"]: r for r in data["results"]["rows"] if r["budget"] == "0.5%"}
    ours, peft = rows.get("prefix"), rows.get("peft-prefix")
    if not ours or not peft:
        return []
    rates = sorted({float(k) for r in (ours, peft) for k in r["lr_dev"]})

    def dev(r, lr):
        value = {float(k): v for k, v in r["lr_dev"].items()}.get(lr)
        return "-" if value is None else f"{value:.2f}" + (" (chance)" if value < 55 else "")

    def seeds(r):
        return ", ".join(f"{p['test']:.2f}" + (" (chance)" if p["test"] < 55 else "") for p in r["per_seed"])

    return [
        "**Our prefix-tuning vs PEFT's** (0.5%, same data, loop, length and reparameterisation MLP)",
        "",
        "| lr | ours: dev (seed 0) | PEFT: dev (seed 0) |",
        "|---:|---:|---:|",
        *(f"| {lr:g} | {dev(ours, lr)} | {dev(peft, lr)} |" for lr in rates),
        "",
        f"Test per seed at the chosen rate: ours (lr {ours['chosen_lr']:g}) {seeds(ours)}; PEFT "
        f"(lr {peft['chosen_lr']:g}) {seeds(peft)}.",
        "",
    ]



def _nlg_seeds(data: dict) -> list[str]:
    # The seeds study's own markdown, one heading level down, without its title.
    body = render_nlg_seeds(data).split("\n", 1)[1].replace("\n## ", "\n#### ")
    title = "### NLG over seeds: inducer (both inits) and LoRA, 150 steps"
    link = ("Details: [`benchmarks/results/quality_nlg_seeds.md`]"
            "(benchmarks/results/quality_nlg_seeds.md).")
    return [title, "", *body.strip().splitlines(), "", link, ""]


def section() -> str:
    lines = [START, "", "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`.", ""]
    for name, render in (("quality_nlu.json", _nlu), ("quality_nlg.json", _nlg)):
        data = _load(name)
        if data:
            lines += render(data)
        if name == "quality_nlu.json":
            lines += _prefix_vs_peft(data) if data else []
            for file, title, note in STUDIES:
                study = _load(f"{file}.json")
                if study:
                    lines += _study(study, title, note, file, show_rows=file != "quality_nlu_paired")
    seeds = _load("quality_nlg_seeds.json")
    if seeds:
        lines += _nlg_seeds(seeds)
    for name, title in (
        ("cost_cpu.json", "Cost on CPU (every method, PEFT alongside)"),
        ("cost.json", "Cost on a GPU (bf16)"),
    ):
        data = _load(name)
        if data:
            data["_file"] = name.removesuffix(".json")
            lines += _cost(data, title)
    data = _load("gpu_check.json")
    if data:
        lines += _gpu_check(data)
    return "\n".join(lines + [END])


def headline() -> str:
    """The README's results table: test accuracy at ≈0.5% on MiniLM × vader-movies, with its command."""
    data = _load("quality_nlu.json")
    if not data:
        return "\n".join([HEADLINE_START, "(no quality_nlu.json yet)", HEADLINE_END])
    env = data["environment"]
    rows = {r["config"]: r for r in data["results"]["rows"] if r["budget"] == "0.5%" and r["stage"] == "1-2"}
    lines = [HEADLINE_START, "", "| method | parameters | % of base | test accuracy (3 seeds) |",
             "|---|---:|---:|---:|"]
    for name in HEADLINE_METHODS:
        if name in rows:
            r = rows[name]
            lines.append(f"| {name} | {r['parameters']:,} | {r['percent_of_base']:.3f}% | "
                         f"{_pm(r['test_mean'], r['test_std'], r['n_seeds'])} |")
    lines += ["", f"Made by `{env['command']}` on {env['device_name']} ({env['date'][:10]}; some jobs "
              "finished on a CPU, see the results page); rendered by `python benchmarks/report.py`.", "",
              HEADLINE_END]
    return "\n".join(lines)


def _replace(path: Path, start: str, end: str, text: str) -> None:
    current = path.read_text()
    if start not in current or end not in current:
        raise SystemExit(f"{path} has no {start} ... {end} markers: add them where the section goes")
    before, rest = current.split(start, 1)
    path.write_text(before + text + rest.split(end, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--print", action="store_true", help="print the section, do not touch any file")
    args = parser.parse_args()
    text = section()
    if args.print:
        print(text)
        return
    _replace(ROOT / "docs" / "results.md", START, END, text)
    _replace(ROOT / "README.md", HEADLINE_START, HEADLINE_END, headline())
    print("wrote the results section of docs/results.md and the headline table of README.md")


if __name__ == "__main__":
    main()
