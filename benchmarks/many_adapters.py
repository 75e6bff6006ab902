"""Many adapters on one base: what a routed batch, an adapter in cached decoding and N adapters cost.

Run from the repository root:

    python benchmarks/many_adapters.py               # full CPU run: writes benchmarks/results/many_adapters.*
    python benchmarks/many_adapters.py --quick       # smoke run in seconds; prints, writes nothing
    python benchmarks/many_adapters.py --from-json benchmarks/results/many_adapters.json  # redo the md

On a Llama with SmolLM2-135M's geometry (random weights, ``cost.model_config``), float32, sdpa,
eval mode, one torch thread (see ``attention_cost.py`` on threads of a shared machine):

1. **One adapter in cached decoding**: the time of one cached step (one new token per row, after
   a prompt of ``--prompt`` tokens) for the base model and for one inducer adapter. Steps are
   interleaved (base, inducer, base, ...) so that machine noise hits both alike; the ratio is
   the median of per-pair ratios. Targets: <= 1.1x at batch 1.
2. **Eight adapters in one batch**: the same batch of 8 rows once with one adapter active (every
   row uses it) and once routed to 8 different adapters (``inducer.route``), for inducer and for
   LoRA; both a prompt forward pass and a cached decoding step. Target: routed <= 1.25x one.
3. **Memory**: the model's parameter bytes with N adapters, against the base's plus each
   adapter's own tensors (no copy of the base).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost import model_config  # noqa: E402
from lib.formatting import mib, ms, number, table  # noqa: E402
from lib.stamp import environment  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

import inducer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# cost.py's inducer preset at its 0.5% budget on this model (benchmarks/cost_sizes.json), the
# configuration of the 1.32x cached-generation figure in benchmarks/results/cost_cpu.md.
INDUCER = dict(r_k=8, r_v=2)
LORA = dict(r=8, alpha=16, targets=["q", "v"])
ROUTED_ADAPTERS = 8
TARGET_ONE_ADAPTER = 1.1
TARGET_ROUTED = 1.25


def build(quick: bool, seed: int) -> LlamaForCausalLM:
    """The random SmolLM2-shaped model (a tiny one of the same family with ``quick``)."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(model_config("smollm2", 8192, quick)).eval()


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-zero values in every adapter tensor (LoRA's B starts at zero), which changes no cost."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad or "__" in name or ".inducer." in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def prompt(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Random token ids, no padding."""
    return torch.randint(10, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


class DecodeStep:
    """A cached decoding step of ``model`` on ``ids``' prompt, repeatable: the cache is cropped back
    after each step, so every timed step sees the same cache length."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, context: Callable | None = None):
        self.model, self.context = model, context
        with torch.no_grad(), self._routing():
            self.cache = model(input_ids=ids, use_cache=True).past_key_values
        self.token = ids[:, -1:]

    def _routing(self):
        return self.context() if self.context else _NoContext()

    def __call__(self) -> None:
        with torch.no_grad(), self._routing():
            self.model(input_ids=self.token, past_key_values=self.cache, use_cache=True)
        self.cache.crop(-1)


class _NoContext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def paired(first: Callable[[], None], second: Callable[[], None], repeats: int) -> dict:
    """Time ``first`` and ``second`` alternately (order swapped each round); medians and the
    median of per-round ratios second / first."""
    for step in (first, second):  # warm-up
        step()
    times: dict[str, list[float]] = {"first": [], "second": []}
    for index in range(repeats):
        order = (("first", first), ("second", second))
        for label, step in order if index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return {"first_s": statistics.median(times["first"]), "second_s": statistics.median(times["second"]),
            "ratio": statistics.median(b / a for a, b in zip(times["first"], times["second"], strict=True)),
            "repeats": repeats}


def one_adapter_decoding(args) -> list[dict]:
    """Cached step time of the base model and of one inducer adapter, per batch size."""
    base = build(args.quick, args.seed)
    adapted = inducer.attach(build(args.quick, args.seed), inducer.InducerConfig(**INDUCER), train_head=False)
    randomise(adapted, args.seed)
    rows = []
    for batch in args.batches:
        ids = prompt(batch, args.prompt, base.config.vocab_size, args.seed)
        result = paired(DecodeStep(base, ids), DecodeStep(adapted, ids), args.repeats)
        rows.append({"batch": batch, "base_s": result["first_s"], "inducer_s": result["second_s"],
                     "ratio": result["ratio"], "repeats": result["repeats"]})
        print(f"decoding batch {batch}: base {ms(result['first_s'], 2)} ms, inducer "
              f"{ms(result['second_s'], 2)} ms per token ({result['ratio']:.3f}x)", flush=True)
    return rows


def with_adapters(args, method: str, count: int) -> torch.nn.Module:
    """The base with ``count`` adapters of ``method`` named task0, task1, ..."""
    model = build(args.quick, args.seed)
    for index in range(count):
        config = inducer.InducerConfig(**INDUCER) if method == "inducer" else inducer.LoRAConfig(**LORA)
        inducer.attach(model, config, train_head=False, name=f"task{index}")
    randomise(model, args.seed)
    return model


def routed_batches(args) -> list[dict]:
    """A batch of 8 rows on one adapter vs routed to 8 adapters, prompt pass and decoding step."""
    rows = []
    names = [f"task{i}" for i in range(ROUTED_ADAPTERS)]
    for method in ("inducer", "lora"):
        model = with_adapters(args, method, ROUTED_ADAPTERS)
        inducer.set_adapter(model, names[0])
        ids = prompt(ROUTED_ADAPTERS, args.prompt, model.config.vocab_size, args.seed)

        def route(model=model) -> object:
            return inducer.route(model, names)

        def forward(routing: bool, ids=ids, model=model) -> None:
            with torch.no_grad(), (route() if routing else _NoContext()):
                model(input_ids=ids)

        for stage, one, routed in (
            ("prompt", lambda: forward(False), lambda: forward(True)),
            ("decoding step", DecodeStep(model, ids), DecodeStep(model, ids, route)),
        ):
            result = paired(one, routed, args.repeats)
            rows.append({"method": method, "stage": stage, "one_s": result["first_s"],
                         "routed_s": result["second_s"], "ratio": result["ratio"],
                         "repeats": result["repeats"]})
            print(f"{method} {stage}: one adapter {ms(result['first_s'], 2)} ms, 8 routed "
                  f"{ms(result['second_s'], 2)} ms ({result['ratio']:.3f}x)", flush=True)
    return rows


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, tied ones once."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def memory(args) -> list[dict]:
    """Parameter bytes with N inducer adapters against the base's plus the adapters' own."""
    base_bytes = parameter_bytes(build(args.quick, args.seed))
    rows = []
    for count in args.counts:
        model = with_adapters(args, "inducer", count)
        counts = inducer.count_parameters(model)
        own = sum(counts.adapters.values()) * 4  # float32
        total = parameter_bytes(model)
        rows.append({"adapters": count, "base_bytes": base_bytes, "adapter_bytes": own, "total_bytes": total,
                     "extra_over_own": total - base_bytes - own})
        print(f"{count} adapters: {mib(total)} MiB = base {mib(base_bytes)} + adapters {mib(own)} "
              f"(+{total - base_bytes - own} bytes)", flush=True)
    return rows


def render(report: dict) -> str:
    """The markdown report."""
    env, settings = report["environment"], report["settings"]
    lines = [
        "# Many adapters on one base: cost of an adapter in cached decoding and of a routed batch",
        "",
        f"Generated by `{env['command']}` on {env['date_utc']}, {env['cpu_model']} ({env['torch_threads']} "
        f"torch thread), torch {env['torch']}, transformers {env['transformers']}, commit "
        f"{env['git_commit']}{' (src modified)' if env.get('src_modified') else ''}.",
        "",
        f"Random-weight Llama with SmolLM2-135M's geometry{' (tiny: --quick)' if settings['quick'] else ''}, "
        "float32, sdpa, eval mode. Inducer adapters "
        f"`InducerConfig(r_k={INDUCER['r_k']}, r_v={INDUCER['r_v']})` "
        f"(cost.py's inducer preset at 0.5% of the model), LoRA `r={LORA['r']}` on q and v. Prompt "
        f"{settings['prompt']} tokens; a decoding step is one cached forward of one new token per row "
        f"(cache cropped back after each, so all steps see the same cache). Steps alternate between "
        f"the two settings compared ({settings['repeats']} rounds, order swapped each round); times are "
        "medians, ratios medians of per-round ratios.",
        "",
        "## One adapter in cached decoding",
        "",
        *table(["batch", "base ms / token", "inducer ms / token", "ratio", "target"],
               [[r["batch"], ms(r["base_s"], 2), ms(r["inducer_s"], 2), f"{number(r['ratio'], 3)}x",
                 f"<= {TARGET_ONE_ADAPTER}x: {'met' if r['ratio'] <= TARGET_ONE_ADAPTER else 'missed'}"]
                for r in report["decoding"]]),
        "",
        f"## {ROUTED_ADAPTERS} rows, {ROUTED_ADAPTERS} adapters",
        "",
        "One adapter: every row uses `task0` (`set_adapter`). Routed: row i uses `task{i}` "
        "(`inducer.route(model, names)`).",
        "",
        *table(["method", "stage", "one adapter ms", f"{ROUTED_ADAPTERS} routed ms", "ratio", "target"],
               [[r["method"], r["stage"], ms(r["one_s"], 2), ms(r["routed_s"], 2),
                 f"{number(r['ratio'], 3)}x",
                 f"<= {TARGET_ROUTED}x: {'met' if r['ratio'] <= TARGET_ROUTED else 'missed'}"]
                for r in report["routed"]]),
        "",
        "## Memory",
        "",
        *table(["adapters", "parameters MiB", "base MiB", "adapters' own MiB", "other bytes"],
               [[r["adapters"], mib(r["total_bytes"]), mib(r["base_bytes"]), mib(r["adapter_bytes"]),
                 r["extra_over_own"]] for r in report["memory"]]),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per comparison")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="decoding batch sizes")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8, 32], help="adapter counts (memory)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 rounds; prints, writes nothing")
    parser.add_argument("--from-json", type=Path, help="rewrite the markdown from a results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        args.from_json.with_suffix(".md").write_text(render(report))
        return report
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.prompt, args.counts = 3, 8, [1, 2]
    report = {"environment": environment(),
              "settings": {**{k: v for k, v in vars(args).items() if k not in ("out_dir", "from_json")},
                           "inducer": INDUCER, "lora": LORA}}
    report["decoding"] = one_adapter_decoding(args)
    report["routed"] = routed_batches(args)
    report["memory"] = memory(args)
    text = render(report)
    print(text)
    if not args.quick:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "many_adapters.json").write_text(json.dumps(report, indent=2))
        (args.out_dir / "many_adapters.md").write_text(text)
    return report


if __name__ == "__main__":
    main()
