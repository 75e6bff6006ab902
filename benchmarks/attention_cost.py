"""Training-step time and peak memory of inducer-tuning, against a floor and the authors' formulation.

Run from the repository root:

    python benchmarks/attention_cost.py          # full run: writes benchmarks/results/attention_cost.*
    python benchmarks/attention_cost.py --quick  # smoke run in seconds; prints, writes nothing
    python benchmarks/attention_cost.py --lengths 128 512 --repeats 5 --batch 2 --out-dir /tmp/bench
    python benchmarks/attention_cost.py --from-json benchmarks/results/attention_cost.json  # redo the md

Three ways to train the same frozen, randomly initialised MiniLM-sized BERT (hidden 384, 12 heads, 6
layers), all on the sdpa backend and interleaved round by round so that machine noise hits each alike:

* ``floor``: no adapter. The input embeddings' output requires grad, so backward traverses the
  whole network but no parameter gets a gradient: the least any attention-side method can cost.
* ``inducer``: ``inducer.attach(model, InducerConfig(r_k=2, r_v=4, init="paper"))`` on its default fused
  path (LSE from PyTorch's fused kernel, no (B, H, N, M) tensor). The paper's init, so that every tensor
  is non-zero and the gradient checks compare real values (under LoRA-style init B = 0 and A gets none).
* ``authors``: the same inducer parameters, but attention computed the way the authors' released
  code does it: the inducer logit is an extra column of the (B, H, N, M) score matrix and one
  softmax over M + 1 columns gives lam (last column) and the attention weights (the rest). It is
  registered here as the attention function ``inducer_authors`` and checked against the fused path
  before anything is timed.

Peak memory is the peak of live tensor bytes during one training step, measured from the model's
resting footprint with ``torch.profiler`` (``profile_memory=True``); see ``measure_peak_bytes``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lib.formatting import mib, ms, number
from lib.memory import cpu_peak_bytes
from lib.stamp import environment
from torch import nn
from transformers import AttentionInterface, BertConfig, BertModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import inducer
from inducer.core.kernels import additive_mask
from inducer.methods.inducer_tuning import InducerModule
from inducer.runtime.attention import set_implementation

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("floor", "inducer", "authors")
AUTHORS = "inducer_authors"
FUSED = "inducer_sdpa"
MIB = 2**20
# Fewer repeats where one step takes seconds; medians of interleaved rounds absorb the noise.
DEFAULT_REPEATS = {128: 9, 256: 7, 512: 7, 1024: 5, 2048: 3}
# Targets from the project issue.
TARGET_TIME_RATIO_512 = 1.3
TARGET_AUTHORS_SPEEDUP_1024 = 1.5
TARGET_AUTHORS_MEMORY_1024 = 3.0
# A doubling ratio of extra memory is 2 for linear and 4 for quadratic growth; their geometric
# midpoint separates the two.
LINEAR_GROWTH_LIMIT = math.sqrt(2 * 4)
THREADS_NOTE = (
    "One intra-op thread by default: on a 2-core machine shared with other jobs, PyTorch's two "
    "OpenMP threads stall at every barrier whenever another process holds a core. In a trial while "
    "this benchmark was written (two test suites running alongside), two threads made steps 2.5-10x "
    "slower than one thread and erratic (0.7-4.4 s for the same step). Ratios, not absolute times, "
    "are the result; `--threads N` changes the setting."
)


# --------------------------------------------------------------------------------------------
# The authors' formulation, as a transformers attention function
# --------------------------------------------------------------------------------------------


def authors_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inducer attention computed with one softmax over the scores plus the inducer's column.

    Same semantics as ``inducer_sdpa`` (it reuses ``module.inducer``'s parameters, virtual-key
    score and composition), but it materialises the (B, H, N, M + 1) logits and probabilities as the
    authors' code does; that tensor is what the fused path avoids.
    """
    ind: InducerModule | None = getattr(module, "inducer", None)
    if ind is None:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    c = ind.config
    if not c.use_lambda:
        raise ValueError("the authors' formulation needs use_lambda=True (lam is the extra column)")
    if dropout > 0:
        raise ValueError("this benchmark runs without attention dropout (the CPU flash kernel has none)")
    if key.shape[1] != query.shape[1]:
        raise ValueError("authors_attention handles models without grouped-query attention only")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, N, M)
    mask = additive_mask(attention_mask, kwargs.get("position_bias"), query, key.shape[2], is_causal=False)
    if mask is not None:
        scores = scores + mask
    s = ind.virtual_key_score(query, scaling)  # (B, H, N)
    logits = torch.cat([scores, s[..., None].to(scores.dtype)], dim=-1)  # (B, H, N, M + 1)
    probs = torch.softmax(logits, dim=-1)
    lam = probs[..., -1]
    out = torch.matmul(probs[..., :-1], value)  # = (1 - lam) * softmax(scores) @ V
    # The single softmax gave the real keys (1 - lam) of the mass; the library's compose takes the
    # plain attention output (and applies gating itself), so undo that share: a (B, H, N) op.
    out = out / (1.0 - lam)[..., None].to(out.dtype)
    # The rest is the library's own composition (not restated here), with the lam of the
    # concatenated softmax: compose computes lam = sigmoid(s - lse), so it is handed the
    # log-sum-exp over the real keys that this softmax implies, lse = s - logit(lam). compose
    # recomputes s (a (B, H, N) score; a small cost added to this path only).
    lse = s - (torch.log(lam) - torch.log1p(-lam))
    out = ind.compose(query, out, lse, scaling, dropout, module.training)
    return out.transpose(1, 2).contiguous(), None


def register_authors() -> None:
    """Register ``inducer_authors`` and its mask function (sdpa's boolean masks) with transformers."""
    AttentionInterface.register(AUTHORS, authors_attention)
    AttentionMaskInterface.register(AUTHORS, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_attention(model: nn.Module, name: str) -> None:
    """Point every config of ``model`` at the attention function ``name``."""
    set_implementation(model, lambda _current: name)


# --------------------------------------------------------------------------------------------
# Model and training step
# --------------------------------------------------------------------------------------------


def minilm_sized_bert(max_length: int, seed: int) -> BertModel:
    """A random BERT with MiniLM-L6's geometry, on sdpa, built in-process (no hub download)."""
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=max(512, max_length),
        # The CPU flash kernel has no dropout, so the fused path (and sdpa's flash choice) needs 0.
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=False)
    model.train()
    return model


def _input_embeddings_require_grad(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    # With every weight frozen the embedding output is a leaf; asking for its gradient makes
    # backward run through all layers while computing no weight gradient at all.
    return output.requires_grad_(True)


def loss(hidden: torch.Tensor) -> torch.Tensor:
    """A stand-in task loss: squared readout of the last hidden state along a fixed direction.

    Not the mean square of ``hidden`` itself: BERT ends in a LayerNorm, so that is ~1 whatever the
    inputs and its gradients are rounding noise, useless for checking gradients.
    """
    generator = torch.Generator().manual_seed(1234)
    readout = torch.randn(hidden.shape[-1], generator=generator).to(hidden)
    return (hidden.float() @ readout.float()).pow(2).mean()


@dataclass
class Setup:
    """One benchmarked method: the model to run, its attention function and its optimizer."""

    name: str
    model: nn.Module
    attention: str | None
    optimizer: torch.optim.Optimizer | None
    trainable: int = 0

    def step(self, input_ids: torch.Tensor) -> None:
        """Forward + backward + AdamW step on the trainable parameters (the floor has none)."""
        if self.attention is not None:
            use_attention(self.model, self.attention)
        hidden = self.model(input_ids=input_ids).last_hidden_state
        loss(hidden).backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def build_setups(max_length: int, seed: int) -> dict[str, Setup]:
    """The floor on its own copy of the base; inducer and authors share one adapted model."""
    base = minilm_sized_bert(max_length, seed)
    floor_model = copy.deepcopy(base)
    floor_model.requires_grad_(False)
    floor_model.get_input_embeddings().register_forward_hook(_input_embeddings_require_grad)

    adapted = inducer.attach(base, inducer.InducerConfig(r_k=2, r_v=4, init="paper"))
    params = [p for p in adapted.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    trainable = sum(p.numel() for p in params)
    return {
        "floor": Setup("floor", floor_model, None, None),
        "inducer": Setup("inducer", adapted, FUSED, optimizer, trainable),
        "authors": Setup("authors", adapted, AUTHORS, optimizer, trainable),
    }


def random_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    """Token ids without padding (no attention mask: every query sees every key)."""
    generator = torch.Generator().manual_seed(seed + length)
    return torch.randint(1000, 30000, (batch, length), generator=generator)


# --------------------------------------------------------------------------------------------
# Checking the authors' path against the fused one
# --------------------------------------------------------------------------------------------


def _outputs_and_grads(model: nn.Module, attention: str, input_ids: torch.Tensor, seed: int):
    use_attention(model, attention)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)  # same hidden-dropout masks for both paths
    hidden = model(input_ids=input_ids).last_hidden_state
    grads = torch.autograd.grad(loss(hidden), params)
    return hidden.detach(), grads


def _compare(model: nn.Module, input_ids: torch.Tensor, seed: int) -> dict[str, float]:
    fused_out, fused_grads = _outputs_and_grads(model, FUSED, input_ids, seed)
    authors_out, authors_grads = _outputs_and_grads(model, AUTHORS, input_ids, seed)
    grad_error = max(
        ((a - f).norm() / f.norm().clamp_min(1e-12)).item()
        for a, f in zip(authors_grads, fused_grads, strict=True)
    )
    return {
        "max_abs_output_diff": (authors_out - fused_out).abs().max().item(),
        "max_relative_grad_diff": grad_error,
    }


def verify_authors_path(setups: dict[str, Setup], input_ids: torch.Tensor, seed: int) -> dict:
    """Assert that ``inducer_authors`` computes what ``inducer_sdpa`` computes, before timing.

    Checked twice: with the benchmark's initial inducer weights, and with them scaled up 30x so the
    inducer's share of the output (lam, E) is large enough that a wrong lam could not hide in it.
    """
    adapted = setups["inducer"].model
    floor = setups["floor"].model
    result = {"input_shape": list(input_ids.shape)}
    params = {n: p for n, p in adapted.named_parameters() if p.requires_grad}
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        for label, factor in (("initial_weights", 1.0), ("weights_x30", 30.0)):
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name] * factor)
            diffs = _compare(adapted, input_ids, seed)
            use_attention(adapted, FUSED)
            with torch.no_grad():
                torch.manual_seed(seed)
                ours = adapted(input_ids=input_ids).last_hidden_state
                torch.manual_seed(seed)
                plain = floor(input_ids=input_ids).last_hidden_state
            # How much the inducers change the output: the check is only meaningful if this is large.
            diffs["inducer_effect_max_abs"] = (ours - plain).abs().max().item()
            result[label] = diffs
            problem = f"authors-style and fused paths disagree ({label}): {diffs}"
            assert diffs["max_abs_output_diff"] <= 1e-4, problem
            assert diffs["max_relative_grad_diff"] <= 1e-3, problem
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
    return result


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def time_step(setup: Setup, input_ids: torch.Tensor) -> float:
    """Wall-clock seconds of one training step."""
    start = time.perf_counter()
    setup.step(input_ids)
    return time.perf_counter() - start


def measure_peak_bytes(setup: Setup, input_ids: torch.Tensor) -> int:
    """Peak of live tensor bytes during one training step over what was live before it
    (:func:`lib.memory.cpu_peak_bytes`)."""
    return cpu_peak_bytes(lambda: setup.step(input_ids))


def run_length(setups: dict[str, Setup], length: int, batch: int, repeats: int, seed: int) -> dict:
    """Warm up, time ``repeats`` interleaved rounds, then measure each method's peak memory."""
    input_ids = random_ids(batch, length, seed)
    for name in METHODS:  # first step at a new shape pays for allocations and kernel set-up
        setups[name].step(input_ids)
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for round_index in range(repeats):
        # Rotate the order each round so no method always runs first (or right after the heaviest).
        order = METHODS[round_index % 3:] + METHODS[: round_index % 3]
        for name in order:
            times[name].append(time_step(setups[name], input_ids))
    peaks = {name: measure_peak_bytes(setups[name], input_ids) for name in METHODS}

    def paired_ratio(num: str, den: str) -> float:
        # Ratios within a round share the machine's state at that moment; their median is robust
        # to a slow round that hit all methods.
        return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))

    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "length": length,
        "repeats": repeats,
        "times_s": times,
        "median_s": medians,
        "inducer_over_floor": paired_ratio("inducer", "floor"),
        "authors_over_inducer": paired_ratio("authors", "inducer"),
        "inducer_over_floor_of_medians": medians["inducer"] / medians["floor"],
        "authors_over_inducer_of_medians": medians["authors"] / medians["inducer"],
        "peak_bytes": peaks,
        "extra_bytes": {
            "inducer": peaks["inducer"] - peaks["floor"],
            "authors": peaks["authors"] - peaks["floor"],
        },
    }


# --------------------------------------------------------------------------------------------
# Targets and reports
# --------------------------------------------------------------------------------------------


def add_growth(rows: list[dict]) -> None:
    """extra(L) / extra(L') for consecutive measured lengths, normalised to a doubling."""
    for previous, row in zip(rows, rows[1:], strict=False):
        row["extra_growth_per_doubling"] = {}
        doublings = math.log2(row["length"] / previous["length"])
        for name in ("inducer", "authors"):
            before, now = previous["extra_bytes"][name], row["extra_bytes"][name]
            ratio = (now / before) ** (1 / doublings) if before > 0 and now > 0 else None
            row["extra_growth_per_doubling"][name] = ratio


def _row(rows: list[dict], length: int) -> dict | None:
    return next((row for row in rows if row["length"] == length), None)


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """Each target of the issue with the measured value and met / missed / not measured."""
    targets = []
    row = _row(rows, 512)
    value = row["inducer_over_floor"] if row else None
    targets.append({
        "target": f"step time inducer/floor <= {TARGET_TIME_RATIO_512} at length 512",
        "value": value, "met": None if value is None else value <= TARGET_TIME_RATIO_512,
    })
    growth = [r["extra_growth_per_doubling"]["inducer"] for r in rows if "extra_growth_per_doubling" in r]
    measured = [g for g in growth if g is not None]
    worst = max(measured) if measured else None
    targets.append({
        "target": f"extra peak memory of inducer over floor grows linearly with length (every "
                  f"per-doubling growth <= {LINEAR_GROWTH_LIMIT:.2f}; 2 = linear, 4 = quadratic)",
        "value": worst,
        "met": None if worst is None or len(measured) != len(growth) else worst <= LINEAR_GROWTH_LIMIT,
    })
    row = _row(rows, 1024)
    value = row["authors_over_inducer"] if row else None
    targets.append({
        "target": f"inducer >= {TARGET_AUTHORS_SPEEDUP_1024}x faster than authors-style at length 1024",
        "value": value, "met": None if value is None else value >= TARGET_AUTHORS_SPEEDUP_1024,
    })
    value = None
    if row and row["extra_bytes"]["inducer"] > 0:
        value = row["extra_bytes"]["authors"] / row["extra_bytes"]["inducer"]
    elif row:
        value = math.inf if row["extra_bytes"]["authors"] > 0 else None
    targets.append({
        "target": f"inducer needs >= {TARGET_AUTHORS_MEMORY_1024}x less extra memory than authors-style "
                  "at length 1024",
        "value": value, "met": None if value is None else value >= TARGET_AUTHORS_MEMORY_1024,
    })
    return targets


def render_markdown(report: dict) -> str:
    """The human-readable results: setup, the table, memory growth, targets and provenance."""
    env, cfg, rows = report["environment"], report["config"], report["rows"]
    lines = [
        "# Attention cost: inducer-tuning vs floor vs authors-style",
        "",
        f"Generated by `{env['command']}` on {env['date_utc']}. Times are medians of "
        "interleaved rounds; ratios are medians of per-round ratios.",
        "",
        f"Model: random BERT with MiniLM-L6's geometry (hidden {cfg['hidden']}, {cfg['heads']} heads, "
        f"{cfg['layers']} layers, intermediate {cfg['intermediate']}, vocab {cfg['vocab']}), sdpa "
        f"backend, float32, batch {cfg['batch']}, no padding. **Attention dropout is 0** (the CPU "
        "flash kernel has no dropout); hidden dropout is BERT's default 0.1 for all three methods. "
        "Step = forward + backward + AdamW step on the trainable parameters; loss = mean of the "
        "squared readout of the last hidden state along a fixed random direction.",
        "",
        "- **floor**: the frozen base with only the input embeddings' *output* requiring grad "
        "(a forward hook on `get_input_embeddings()`), so backward traverses every layer but "
        "computes no weight gradient and there is no optimizer step: the cheapest full backward.",
        "- **inducer**: `inducer.attach(model, InducerConfig(r_k=2, r_v=4, init=\"paper\"))`, default fused "
        f"path (`inducer_sdpa`); {cfg['trainable']:,} trainable parameters.",
        "- **authors**: the same inducer parameters with attention computed the authors' way "
        "(inducer logit concatenated as column M+1 of the scores, one softmax, so a (B, H, N, M+1) "
        "tensor is materialised), registered as the attention function `inducer_authors`. Before "
        "timing it was asserted to match the fused path (outputs to 1e-4, inducer gradients to "
        "1e-3 relative), at initial weights and with inducer weights scaled 30x: "
        + "; ".join(
            f"{label}: max |Δout| {v['max_abs_output_diff']:.1e}, max rel. Δgrad "
            f"{v['max_relative_grad_diff']:.1e}, inducer effect on output {v['inducer_effect_max_abs']:.1e}"
            for label, v in report["verification"].items() if isinstance(v, dict)
        ) + ".",
        "",
        "Memory: peak of live PyTorch tensor bytes during one training step, above the bytes live "
        "just before it (weights, optimizer state), from `torch.profiler` allocation events "
        "(`profile_memory=True`). This is deterministic and immune to allocator caching and "
        "import-time RSS peaks, which make RSS deltas unreliable on CPU; it does not count scratch "
        "memory oneDNN/BLAS allocate outside PyTorch (the same for all methods). *Extra memory* = "
        "a method's step peak minus the floor's step peak at the same length.",
        "",
        f"Threads: {env['torch_threads']}. " + THREADS_NOTE,
        "",
        "| length | floor ms | inducer ms | authors ms | inducer/floor | authors/inducer "
        "| extra mem inducer (MiB) | extra mem authors (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        med, extra = row["median_s"], row["extra_bytes"]
        lines.append(
            f"| {row['length']} | {ms(med['floor'])} | {ms(med['inducer'])} | {ms(med['authors'])} "
            f"| {row['inducer_over_floor']:.2f} | {row['authors_over_inducer']:.2f} "
            f"| {mib(extra['inducer'])} | {mib(extra['authors'])} |"
        )
    lines += [
        "",
        "Memory detail: the floor's own step peak, and how extra memory grows per doubling of "
        "length (2 = linear, 4 = quadratic).",
        "",
        "| length | repeats | floor step peak (MiB) | inducer extra growth | authors extra growth "
        "| authors extra / inducer extra |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        growth = row.get("extra_growth_per_doubling", {})
        extra = row["extra_bytes"]
        share = extra["authors"] / extra["inducer"] if extra["inducer"] > 0 else None
        lines.append(
            f"| {row['length']} | {row['repeats']} | {mib(row['peak_bytes']['floor'])} "
            f"| {number(growth.get('inducer'))} | {number(growth.get('authors'))} | {number(share)} |"
        )
    lines += [
        "",
        "Reading inducer/floor: the floor's backward runs down to the embeddings, so it includes "
        "layer 0's attention backward; inducer's does not need it (layer 0's queries, keys and "
        "values depend on no trainable parameter). Each of inducer's attention calls, on the other "
        "hand, costs more than plain sdpa: the LSE gradient pads q, k, v, out and dO by one channel "
        "for the fused backward. Where attention dominates (long sequences) the two roughly cancel, "
        "so a ratio near or below 1 there is expected; round-to-round noise is in the JSON "
        "(`times_s`).",
        "",
        "## Targets",
        "",
    ]
    for target in report["targets"]:
        verdict = {True: "**met**", False: "**missed**", None: "not measured"}[target["met"]]
        lines.append(f"- {verdict}: {target['target']} (measured {number(target['value'])})")
    lines += [
        "",
        "## Machine",
        "",
        f"- {env['cpu_count']} CPUs ({env['processor']}), torch threads {env['torch_threads']}, "
        f"{env['platform']}, Python {env['python']}",
        f"- torch {env['torch']}, transformers {env['transformers']}, inducer {env['inducer']}, "
        f"commit {env['git_commit']}" + (" (src modified)" if env["src_modified"] else ""),
        f"- total wall time {report['wall_s']:.0f} s; other work may have shared the machine, which "
        "interleaved rounds and paired ratios are meant to absorb",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=sorted(DEFAULT_REPEATS),
                        help="sequence lengths (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed rounds per length (default: {DEFAULT_REPEATS}, 5 for other lengths)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default: %(default)s; two threads stall when other "
                             "jobs share the cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write attention_cost.{json,md} (default: benchmarks/results; "
                             "--quick writes nothing unless this is given)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only re-render the markdown from an earlier run's JSON (no measuring)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: lengths 32 64, 2 rounds, batch 1")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats, args.batch = [32, 64], 2, 1
    elif args.out_dir is None:
        args.out_dir = ROOT / "benchmarks" / "results"
    if any(length < 1 for length in args.lengths) or args.batch < 1 or (args.repeats or 1) < 1:
        parser.error("lengths, batch and repeats must be positive")
    args.lengths = sorted(set(args.lengths))
    return args


def rerender(path: Path) -> None:
    """Rewrite the markdown next to a results JSON from that JSON, without measuring again."""
    report = json.loads(path.read_text())
    path.with_suffix(".md").write_text(render_markdown(report))
    print(f"wrote {path.with_suffix('.md')} from {path}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json is not None:
        rerender(args.from_json)
        return json.loads(args.from_json.read_text())
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    register_authors()
    setups = build_setups(max(args.lengths), args.seed)
    config = setups["floor"].model.config
    report: dict = {
        "environment": environment(),
        "config": {
            "hidden": config.hidden_size, "heads": config.num_attention_heads,
            "layers": config.num_hidden_layers, "intermediate": config.intermediate_size,
            "vocab": config.vocab_size, "batch": args.batch, "lengths": args.lengths,
            "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
            "hidden_dropout_prob": config.hidden_dropout_prob,
            "trainable": setups["inducer"].trainable, "seed": args.seed,
            "floor_gradient": "input embeddings' output requires grad (forward hook); no weight gradients",
            "memory_method": "torch.profiler profile_memory: peak running sum of CPU allocator events",
        },
    }
    check_ids = random_ids(args.batch, min(args.lengths), args.seed + 1)
    report["verification"] = verify_authors_path(setups, check_ids, args.seed)
    print(f"authors-style path matches the fused path: {report['verification']}", flush=True)

    rows = []
    for length in args.lengths:
        repeats = args.repeats or DEFAULT_REPEATS.get(length, 5)
        row = run_length(setups, length, args.batch, repeats, args.seed)
        rows.append(row)
        med = row["median_s"]
        print(f"L={length}: floor {ms(med['floor'])} ms, inducer {ms(med['inducer'])} ms, authors "
              f"{ms(med['authors'])} ms; extra MiB inducer {mib(row['extra_bytes']['inducer'])}, "
              f"authors {mib(row['extra_bytes']['authors'])}", flush=True)
    add_growth(rows)
    report["rows"] = rows
    report["targets"] = evaluate_targets(rows)
    report["wall_s"] = time.perf_counter() - started
    markdown = render_markdown(report)
    print(markdown)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "attention_cost.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out_dir / "attention_cost.md").write_text(markdown)
        print(f"wrote {args.out_dir / 'attention_cost.json'} and {args.out_dir / 'attention_cost.md'}")
    return report


if __name__ == "__main__":
    main()
