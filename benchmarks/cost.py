"""Cost of every method: training-step time and peak memory, and cached-generation latency.

Run from the repository root (``PYTHONPATH=src`` if the project is not installed):

    python benchmarks/cost.py --device cuda --repeats 3 --gen-repeats 2 --deadline-seconds 150 --out OUT
    python benchmarks/cost.py --models minilm --lengths 128 256 --repeats 3         # small CPU run
    python benchmarks/cost.py --quick                 # seconds-long CPU smoke run; writes nothing
    python benchmarks/cost.py --from-json benchmarks/results/cost.json             # redo the md

Writes ``OUT/cost.json`` and ``OUT/cost.md`` (default ``benchmarks/results``), rewritten after every
finished block, so a run stopped by ``--deadline-seconds`` (or killed) leaves its partial results.

1. **Training step** (forward + backward + AdamW step on the trainable parameters) of every method
   preset at a matched budget (``inducer.preset(name, model, budget)``, default 0.5% of the real
   model's parameters), against the frozen-base *floor* (no adapter; the input embeddings' output
   requires grad, so backward runs through every layer but computes no weight gradient, as in
   ``attention_cost.py``) and against PEFT's LoRA and prefix-tuning sized like inducer's presets.
   Models (random initialisation: timing does not depend on the weights):

   * ``minilm``: BERT with all-MiniLM-L6-v2's geometry (hidden 384, 12 heads, 6 layers); the
     real model has 512 positions, so one with max(512, longest length) positions is built. The
     budget is the percentage of the real 512-position model; loss: squared readout of the last
     hidden state along a fixed direction.
   * ``smollm2``: Llama with SmolLM2-135M's geometry (hidden 576, 9 heads, 3 key/value heads, 30
     layers, intermediate 1536, vocab 49152, tied embeddings); loss: the causal-LM loss.

   Methods run interleaved, round by round (the order rotates), after a warm-up step and one step
   that measures memory; times are medians, ratios to the floor are medians of per-round ratios.
   Memory: the peak during one step above what was allocated just before it (CUDA:
   ``torch.cuda.max_memory_allocated``; CPU: ``lib.memory.cpu_peak_bytes``, the profiler's
   allocation events), plus each method's resting footprint (weights, optimizer state).
2. **Cached generation** on the smollm2 model: greedy ``model.generate`` with ``use_cache``, a
   64-token prompt and 64 new tokens, for the base model, LoRA unmerged and merged
   (``inducer.merge``), prefix-tuning in its inference form (flat prefixes) and inducer-tuning;
   per-token latency is the median gap between consecutive tokens handed to a streamer.

A failure of one method at one length (out of memory, a PEFT incompatibility) is recorded as an
error row and the run goes on.
"""

from __future__ import annotations

import time

_START = time.perf_counter()  # the deadline counts from here, imports included

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lib.formatting import mib, ms, number  # noqa: E402
from lib.jobs import Deadline  # noqa: E402
from lib.memory import cpu_peak_bytes  # noqa: E402
from lib.peft_sizes import peft_prefix_sizes  # noqa: E402
from lib.stamp import environment as stamp  # noqa: E402

import inducer  # noqa: E402
from inducer.sizing.presets import parse_budget  # noqa: E402

try:
    import peft
except ImportError:  # recorded as error rows for the PEFT methods
    peft = None

ROOT = Path(__file__).resolve().parent.parent
PRESET_METHODS = tuple(inducer.PRESETS)  # full, bitfit, prefix, lora, adapter, ..., inducer+mam
PEFT_METHODS = ("peft-lora", "peft-prefix")
ALL_METHODS = ("floor", *PRESET_METHODS, *PEFT_METHODS)
GENERATION_METHODS = ("base", "lora", "lora-merged", "prefix", "inducer")
DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048)
MODELS = ("minilm", "smollm2")
DEFAULT_SIZES = ROOT / "benchmarks" / "cost_sizes.json"


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def model_config(name: str, max_length: int, quick: bool):
    """The random model's config: the real geometry, or a tiny one of the same family (--quick)."""
    if name == "minilm":
        sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=1000) if quick else dict(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
            vocab_size=30522)
        # The real MiniLM has 512 positions; longer lengths need more (said in the report).
        return BertConfig(**sizes, max_position_embeddings=max(512, max_length),
                          attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    if name == "smollm2":
        sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=1000) if quick else dict(
            hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
            intermediate_size=1536, vocab_size=49152)
        return LlamaConfig(**sizes, max_position_embeddings=max(8192, max_length), rms_norm_eps=1e-5,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                           attn_implementation="sdpa")
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def build_model(name: str, max_length: int, quick: bool, device: str, dtype: torch.dtype, seed: int):
    config = model_config(name, max_length, quick)
    torch.manual_seed(seed)
    with torch.device(device):
        model = BertModel(config, add_pooling_layer=False) if name == "minilm" else LlamaForCausalLM(config)
    return model.to(dtype).train()


def reference_parameter_count(name: str, quick: bool) -> int:
    """Parameters of the real model (MiniLM: 512 positions and its pooler), on the meta device."""
    with torch.device("meta"):
        config = model_config(name, 512, quick)
        model = BertModel(config) if name == "minilm" else LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def _require_input_grad(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True)


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@dataclass
class Method:
    """One benchmarked training setup: its model, optimizer and what it trains."""

    name: str
    model: nn.Module
    kind: str  # "minilm" | "smollm2"
    optimizer: torch.optim.Optimizer | None
    info: dict = field(default_factory=dict)
    _readout: torch.Tensor | None = None

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.kind == "smollm2":
            loss = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if self._readout is None:
                generator = torch.Generator().manual_seed(1234)
                self._readout = torch.randn(hidden.shape[-1], generator=generator).to(hidden.device)
            loss = (hidden.float() @ self._readout).pow(2).mean()
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _peft_targets(kind: str) -> list[str]:
    return ["query", "value"] if kind == "minilm" else ["q_proj", "v_proj"]


class Sizes:
    """Preset sizes per (model, method, budget): searched once per run, or read from a sizes file.

    Budget matching searches many configurations (tens of seconds for SmolLM2's 30 layers on a slow
    CPU); ``benchmarks/cost_sizes.json`` holds the sizes a search chose, so a run on a lent machine
    spends its time measuring. ``--sizes none`` searches again; ``--write-sizes`` updates the file.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.saved: dict = {}
        if path is not None and path.is_file():
            self.saved = json.loads(path.read_text())
        self.memo: dict[str, object] = {}
        self.searched: dict[str, dict] = {}

    def preset(self, name: str, model: nn.Module, kind: str, budget: int, reference: int):
        key = f"{kind}|{name}|{budget}|{reference}"
        if key not in self.memo:
            entry = self.saved.get(key)
            if entry is not None and inducer.PRESETS[name].ranges:
                # "knobs": what files written before the name "sizes" call them
                result = inducer.preset(name, model, sizes=entry.get("sizes", entry.get("knobs")))
                result.summary += f" (sizes that budget matching chose for {budget:,}, from {self.path.name})"
            else:
                result = inducer.preset(name, model, budget=budget)
                self.searched[key] = {"sizes": _jsonable(result.sizes), "count": result.count,
                                      "summary": result.summary}
            self.memo[key] = result
        return self.memo[key]

    def write(self) -> None:
        if self.path is not None and self.searched:
            merged = {**self.saved, **self.searched}
            self.path.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")
            print(f"wrote {len(self.searched)} entries to {self.path}")


SIZES = Sizes(None)


def build_method(name: str, base: nn.Module, kind: str, budget: int, reference: int) -> Method:
    """A deep copy of ``base`` set up for ``name``; raises if the method cannot be built."""
    model = copy.deepcopy(base)
    info: dict = {}
    if name == "floor":
        model.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(_require_input_grad)
        info["description"] = "frozen base; input embeddings' output requires grad; no optimizer"
        return Method(name, model, kind, None, {**info, "trainable": 0})
    if name in PRESET_METHODS:
        configs = SIZES.preset(name, model, kind, budget, reference)
        inducer.attach(model, configs, train_head=False)
        count = inducer.count_parameters(model)
        sized = bool(inducer.PRESETS[name].ranges)  # full fine-tuning and BitFit have no size to match
        info.update(description=configs.summary if sized else f"{name}: {inducer.PRESETS[name].description}",
                    sizes=_jsonable(configs.sizes), inference_parameters=configs.count, added=count.added)
    elif name in PEFT_METHODS:
        if peft is None:
            raise RuntimeError("peft is not installed")
        model = build_peft(name, model, kind, budget, reference, info)
    else:
        raise ValueError(f"unknown method {name!r}; choose from {ALL_METHODS}")
    params = _trainable(model)
    info["trainable"] = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    return Method(name, model, kind, optimizer, info)


def build_peft(name: str, model: nn.Module, kind: str, budget: int, reference: int, info: dict) -> nn.Module:
    """PEFT's LoRA / prefix-tuning with the sizes inducer's preset picked for the same budget."""
    if name == "peft-lora":
        knobs = SIZES.preset("lora", model, kind, budget, reference).sizes
        config = peft.LoraConfig(r=knobs["r"], lora_alpha=2 * knobs["r"], lora_dropout=0.0,
                                 target_modules=_peft_targets(kind), layers_to_transform=knobs.get("layers"),
                                 task_type="CAUSAL_LM" if kind == "smollm2" else None)
        info["description"] = (f"peft {peft.__version__} LoRA on {_peft_targets(kind)}, r={knobs['r']}, "
                               f"alpha={2 * knobs['r']}, layers="
                               f"{'all' if not knobs.get('layers') else 'top ' + str(len(knobs['layers']))}"
                               " (inducer's lora preset sizes)")
    else:
        preset = SIZES.preset("prefix", model, kind, budget, reference)
        sizes = peft_prefix_sizes(preset, model.config.num_hidden_layers)
        length, hidden = sizes["num_virtual_tokens"], preset[0].reparam_hidden
        task_type = "CAUSAL_LM" if kind == "smollm2" else "FEATURE_EXTRACTION"
        config = peft.PrefixTuningConfig(**sizes, task_type=task_type)
        info["description"] = (f"peft {peft.__version__} prefix-tuning, {length} virtual tokens on every "
                               f"layer, prefix_projection (hidden {hidden}) like inducer's prefix preset")
        info["sizes"] = {"num_virtual_tokens": length, "encoder_hidden_size": hidden}
    model = peft.get_peft_model(model, config)
    model.train()
    return model


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def resting_bytes(method: Method) -> int:
    """Bytes of the method's weights, buffers and optimizer state (tied / shared tensors once)."""
    seen: dict[int, int] = {}
    tensors = list(method.model.parameters()) + list(method.model.buffers())
    if method.optimizer is not None:
        for state in method.optimizer.state.values():
            tensors += [t for t in state.values() if isinstance(t, torch.Tensor)]
    for t in tensors:
        seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
    return sum(seen.values())


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_step(method: Method, ids: torch.Tensor, mask: torch.Tensor, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    method.step(ids, mask)
    sync(device)
    return time.perf_counter() - start


def peak_step_bytes(method: Method, ids: torch.Tensor, mask: torch.Tensor, device: str) -> int:
    """Peak allocated bytes during one step above what was allocated just before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        method.step(ids, mask)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return cpu_peak_bytes(lambda: method.step(ids, mask))


def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) <= 400 else text[:400] + " ..."


def _recover(method: Method, device: str) -> None:
    """After a failed step: drop gradients and cached blocks so the next method starts clean."""
    try:
        if method.optimizer is not None:
            method.optimizer.zero_grad(set_to_none=True)
        method.model.zero_grad(set_to_none=True)
    except Exception:  # noqa: BLE001
        pass
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def random_batch(batch: int, length: int, vocab: int, device: str, seed: int):
    generator = torch.Generator().manual_seed(seed + length)
    ids = torch.randint(min(10, vocab - 1), vocab, (batch, length), generator=generator).to(device)
    return ids, torch.ones_like(ids)


def run_block(methods: dict[str, Method], model_name: str, length: int, args, clock: Deadline,
              estimate: float | None) -> tuple[list[dict], float]:
    """One (model, length): warm-up, memory step, then interleaved timed rounds until done or deadline.

    Returns the rows and a per-round time estimate (sum of medians), for planning the next block.
    """
    vocab = next(iter(methods.values())).model.config.vocab_size
    ids, mask = random_batch(args.batch, length, vocab, args.device, args.seed)
    rows = {name: {"model": model_name, "length": length, "method": name, "status": "ok"} for name in methods}
    active = list(methods)

    def fail(name: str, err: BaseException, stage: str) -> None:
        rows[name].update(status="error", error=f"{stage}: {_error_text(err)}")
        if args.verbose:
            traceback.print_exc()
        active.remove(name)
        _recover(methods[name], args.device)

    for name in list(active):  # warm-up: first step at a new shape allocates and picks kernels
        try:
            methods[name].step(ids, mask)
            sync(args.device)
        except Exception as err:  # noqa: BLE001  (OOM, PEFT incompatibility, ...)
            fail(name, err, "warm-up")
    for name in list(active):
        try:
            extra = peak_step_bytes(methods[name], ids, mask, args.device)
            rest = resting_bytes(methods[name])
            rows[name].update(step_extra_bytes=extra, resting_bytes=rest, peak_bytes=rest + extra)
        except Exception as err:  # noqa: BLE001
            fail(name, err, "memory step")
    times: dict[str, list[float]] = {name: [] for name in active}
    round_estimate = estimate
    for round_index in range(args.repeats):
        if round_index > 0 and round_estimate is not None and clock.left() < round_estimate:
            break  # the deadline: keep the rounds done so far
        shift = round_index % max(len(active), 1)
        started = time.perf_counter()
        for name in active[shift:] + active[:shift]:
            if name not in times:
                continue
            try:
                times[name].append(timed_step(methods[name], ids, mask, args.device))
            except Exception as err:  # noqa: BLE001
                fail(name, err, f"round {round_index}")
                del times[name]
        round_estimate = time.perf_counter() - started
    floor = times.get("floor")
    for name, values in times.items():
        row = rows[name]
        median = statistics.median(values) if values else None
        row.update(repeats=len(values), times_s=values, median_s=median)
        if floor and values and name != "floor":
            n = min(len(values), len(floor))
            row["time_ratio_to_floor"] = statistics.median(a / b for a, b in zip(values[:n], floor[:n],
                                                                                   strict=True))
    floor_row = rows.get("floor", {})
    for row in rows.values():
        if row["status"] == "ok" and floor_row.get("status") == "ok" and row["method"] != "floor":
            row["extra_over_floor_bytes"] = row["step_extra_bytes"] - floor_row["step_extra_bytes"]
            row["peak_ratio_to_floor"] = row["peak_bytes"] / floor_row["peak_bytes"]
    return list(rows.values()), round_estimate or 0.0


def train_model(model_name: str, args, clock: Deadline, report: dict, save: Callable[[], None]) -> None:
    """Build every method on one model, then run each length while the deadline allows."""
    lengths = args.lengths
    built_at = time.perf_counter()
    base = build_model(model_name, max(lengths), args.quick, args.device, args.dtype, args.seed)
    reference = reference_parameter_count(model_name, args.quick)
    budget = parse_budget(args.budget, reference)
    info = report["models"].setdefault(model_name, {})
    info.update(config=_jsonable(model_config(model_name, max(lengths), args.quick).to_dict()),
                parameters=sum(p.numel() for p in base.parameters()), reference_parameters=reference,
                budget=budget, budget_arg=args.budget, methods={})
    methods: dict[str, Method] = {}
    for name in args.methods:
        try:
            methods[name] = build_method(name, base, model_name, budget, reference)
            info["methods"][name] = methods[name].info
        except Exception as err:  # noqa: BLE001
            info["methods"][name] = {"error": _error_text(err)}
            if args.verbose:
                traceback.print_exc()
    del base
    info["build_s"] = time.perf_counter() - built_at
    print(f"[{clock.elapsed():6.1f}s] {model_name}: built {len(methods)} methods in {info['build_s']:.1f}s "
          f"(budget {budget:,})", flush=True)
    for name, entry in info["methods"].items():
        if "error" in entry:
            print(f"  {name}: cannot build: {entry['error']}", flush=True)
    estimate, previous = None, None
    for length in lengths:
        if estimate is not None:
            # Scale the last block's round time (at least linearly in length) for this block's warm-up,
            # memory step and one round.
            estimate *= length / previous
        needed = 3 * estimate if estimate is not None else 0.0
        if clock.left() < needed or clock.left() <= 0:
            report["training"] += [{"model": model_name, "length": length, "method": name,
                                    "status": "skipped", "error": "deadline"} for name in methods]
            print(f"[{clock.elapsed():6.1f}s] {model_name} L={length}: skipped (deadline)", flush=True)
            continue
        started = time.perf_counter()
        rows, estimate = run_block(methods, model_name, length, args, clock, estimate)
        previous = length
        report["training"] += rows
        save()
        print(f"[{clock.elapsed():6.1f}s] {model_name} L={length} ({time.perf_counter() - started:.1f}s): "
              + ", ".join(_short(row) for row in rows), flush=True)
    del methods
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()


def _short(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['method']} {row['status'].upper()}"
    ratio = row.get("time_ratio_to_floor")
    return f"{row['method']} {ms(row.get('median_s'), 1)}ms" + (f" x{ratio:.2f}" if ratio else "")


def search_sizes(args) -> None:
    """Budget matching for every preset on the real geometries (meta device), into the sizes file."""
    if SIZES.path is None:
        raise SystemExit("--sizes-only needs a --sizes file")
    SIZES.saved = {}  # search again
    for kind in args.models:
        reference = reference_parameter_count(kind, args.quick)
        budget = parse_budget(args.budget, reference)
        with torch.device("meta"):
            config = model_config(kind, max(args.lengths), args.quick)
            if kind == "minilm":
                model = BertModel(config, add_pooling_layer=False)
            else:
                model = LlamaForCausalLM(config)
        for name in PRESET_METHODS:
            if not inducer.PRESETS[name].ranges:
                continue
            started = time.perf_counter()
            try:
                summary = SIZES.preset(name, model, kind, budget, reference).summary
                print(f"{kind} {name} ({time.perf_counter() - started:.1f}s): {summary}", flush=True)
            except ValueError as err:
                print(f"{kind} {name}: {err}", flush=True)
    SIZES.write()


# --------------------------------------------------------------------------------------------
# Cached generation
# --------------------------------------------------------------------------------------------


class TokenClock:
    """A streamer that notes when each batch of tokens reaches the host (generate syncs for it)."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, _value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def build_generator(name: str, base: nn.Module, budget: int, reference: int) -> nn.Module:
    model = copy.deepcopy(base)
    if name == "base":
        return model
    preset_name = "lora" if name.startswith("lora") else name
    configs = SIZES.preset(preset_name, model, "smollm2", budget, reference)
    if name == "prefix":  # the inference form: the reparameterisation MLP folded into flat prefixes
        configs = [c.inference_config() for c in configs]
    inducer.attach(model, configs, train_head=False)
    if name == "lora-merged":
        inducer.merge(model)
    summary = SIZES.preset(preset_name, model, "smollm2", budget, reference).summary
    model.info = summary + {"prefix": "; run in its inference form (the MLP folded into flat prefixes)",
                            "lora-merged": "; folded into the weights with inducer.merge",
                            "lora": "; unmerged"}.get(name, "")
    return model


def generate_once(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> dict:
    clock = TokenClock()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True, streamer=clock,
                             pad_token_id=model.config.pad_token_id)
    end = time.perf_counter()
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"generated {out.shape[1] - ids.shape[1]} tokens, expected {new_tokens}")
    stamps = clock.stamps  # [prompt, token 1, ..., token n]
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    return {"first_token_s": stamps[1] - stamps[0] if len(stamps) > 1 else None,
            "per_token_s": statistics.median(gaps) if gaps else None,
            "total_s": end - stamps[0] if stamps else None}


def run_generation(args, clock: Deadline, report: dict, save: Callable[[], None]) -> None:
    base = build_model("smollm2", args.gen_prompt + args.gen_new_tokens, args.quick, args.device, args.dtype,
                       args.seed).eval()
    base.requires_grad_(False)
    reference = reference_parameter_count("smollm2", args.quick)
    budget = parse_budget(args.budget, reference)
    info = report["generation_info"]
    info.update(budget=budget, methods={})
    models: dict[str, nn.Module] = {}
    for name in args.gen_methods:
        try:
            models[name] = build_generator(name, base, budget, reference)
            info["methods"][name] = getattr(models[name], "info", "the random base model, no adapter")
        except Exception as err:  # noqa: BLE001
            info["methods"][name] = f"error: {_error_text(err)}"
            report["generation"].append({"method": name, "status": "error", "error": _error_text(err)})
    del base
    vocab = model_config("smollm2", 0, args.quick).vocab_size
    for batch in args.gen_batches:
        if clock.left() <= 0:
            report["generation"] += [{"method": n, "batch": batch, "status": "skipped", "error": "deadline"}
                                     for n in models]
            continue
        started = time.perf_counter()
        ids, _ = random_batch(batch, args.gen_prompt, vocab, args.device, args.seed + 7)
        rows = {n: {"method": n, "batch": batch, "status": "ok", "runs": []} for n in models}
        active = list(models)
        round_time = None
        for round_index in range(-1, args.gen_repeats):  # round -1 is the warm-up
            if round_index > 0 and round_time is not None and clock.left() < round_time:
                break
            t0 = time.perf_counter()
            shift = max(round_index, 0) % max(len(active), 1)
            for name in list(active[shift:] + active[:shift]):
                try:  # the warm-up needs only a few tokens: later steps reuse the same kernels
                    new_tokens = args.gen_new_tokens if round_index >= 0 else min(8, args.gen_new_tokens)
                    result = generate_once(models[name], ids, new_tokens)
                    if round_index >= 0:
                        rows[name]["runs"].append(result)
                except Exception as err:  # noqa: BLE001
                    rows[name].update(status="error", error=_error_text(err))
                    active.remove(name)
                    if args.verbose:
                        traceback.print_exc()
            round_time = time.perf_counter() - t0
        base_runs = rows.get("base", {}).get("runs", [])
        for row in rows.values():
            runs = row["runs"]
            if row["status"] != "ok" or not runs:
                continue
            row["repeats"] = len(runs)
            for key in ("per_token_s", "first_token_s", "total_s"):
                values = [r[key] for r in runs if r[key] is not None]
                row[f"median_{key}"] = statistics.median(values) if values else None
            if base_runs and row["method"] != "base":
                n = min(len(runs), len(base_runs))
                row["per_token_ratio_to_base"] = statistics.median(
                    a["per_token_s"] / b["per_token_s"] for a, b in zip(runs[:n], base_runs[:n], strict=True))
        report["generation"] += list(rows.values())
        save()
        print(f"[{clock.elapsed():6.1f}s] generation batch {batch} ({time.perf_counter() - started:.1f}s): "
              + ", ".join(f"{r['method']} " + (f"{ms(r.get('median_per_token_s'), 2)}ms/token"
                                                 if r["status"] == "ok" else r["status"].upper())
                          for r in rows.values()), flush=True)
    del models
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def environment(args) -> dict:
    env = stamp()
    env["peft"] = getattr(peft, "__version__", None)
    env["device"] = args.device
    env["dtype"] = str(args.dtype).removeprefix("torch.")
    env["pythonpath"] = os.environ.get("PYTHONPATH")
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return env


def _x(value: float | None) -> str:
    return "" if value is None else f" ({number(value)}x)"


def _cell(row: dict | None, what: str) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return "skipped" if row["status"] == "skipped" else "error"
    if what == "time":
        return ms(row.get("median_s"), 1) + _x(row.get("time_ratio_to_floor"))
    if what == "extra":
        return mib(row.get("step_extra_bytes")) + _x(
            row["step_extra_bytes"] / row["_floor_extra"] if row.get("_floor_extra") else None)
    return mib(row.get("peak_bytes")) + _x(row.get("peak_ratio_to_floor"))


def render_markdown(report: dict) -> str:
    env, settings = report["environment"], report["settings"]
    device = env.get("gpu") or f"CPU ({env.get('cpu_model')}, {env.get('torch_threads')} torch threads)"
    memory = ("`torch.cuda.max_memory_allocated`" if env["device"] == "cuda"
              else "CPU: torch.profiler allocation events, as attention_cost.py")
    lines = [
        "# Cost of inducer-tuning and the baselines: training step and cached generation",
        "",
        f"Generated by `{env['command']}` on {env['date_utc']} on **{device}**, "
        f"{env['dtype']}, torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
        f"inducer {env['inducer']} (commit {env['git_commit']}"
        + (", src modified" if env.get("src_modified") else "") + "). "
        + ("**Partial run**: the deadline or an interruption stopped it before the end. "
           if not report.get("complete") else "")
        + f"Total wall time {report.get('wall_s', 0):.0f} s.",
        "",
        "**All weights are random** (timing and memory do not depend on their values); the models only "
        "have the geometry of the real ones. Inputs are random token ids without padding (attention "
        "mask of ones), sdpa attention. "
        f"Training batch {settings['batch']}; methods interleaved round by round (rotating order), "
        f"after one warm-up step and one memory step; {settings['repeats']} timed rounds per length "
        "unless the deadline cut them (the `repeats` field of each row). Times are medians; ratios "
        "(in parentheses) are to the floor, medians of per-round ratios for time.",
        "",
        "- **floor**: the frozen base with only the input embeddings' output requiring grad: backward "
        "runs through every layer, no weight gradient, no optimizer: the least any method can cost.",
        "- **presets**: `inducer.preset(name, model, budget)` at the budget below (full fine-tuning and "
        "BitFit have no size), attached with `train_head=False`; AdamW on the trainable parameters, "
        f"weights and optimizer state all in {env['dtype']} (no mixed precision, no float32 master copy). "
        "Prefix-tuning trains with its reparameterisation MLP (hidden 512), as in the paper.",
        "- **peft-lora / peft-prefix**: `peft.get_peft_model` with the sizes inducer's `lora` / `prefix` "
        "presets chose (same rank and layers; same number of virtual tokens and MLP width).",
        f"- **Memory**: *step extra* is the peak allocated during one step above what was allocated "
        f"just before it ({memory}); "
        "*peak* adds the method's resting footprint (weights, buffers, optimizer state: parameters "
        "shared by tied weights counted once). A ratio below 1 is possible: the floor's backward "
        "reaches the embeddings, while a method whose lowest trainable parameter sits higher up "
        "(LoRA on the top layers, say) stops its backward there.",
        "",
    ]
    for model_name, info in report["models"].items():
        cfg = info.get("config", {})
        title = {"minilm": "MiniLM-shaped BERT", "smollm2": "SmolLM2-135M-shaped Llama"}.get(model_name,
                                                                                              model_name)
        lines += [f"## Training step: {title}", ""]
        positions = cfg.get("max_position_embeddings", 0)
        if model_name == "minilm":
            note = (f"hidden {cfg.get('hidden_size')}, {cfg.get('num_attention_heads')} heads, "
                    f"{cfg.get('num_hidden_layers')} layers, intermediate {cfg.get('intermediate_size')}, "
                    f"vocab {cfg.get('vocab_size')}, "
                    + (f"**{positions} positions** (the real MiniLM has 512; lengths above 512 need more, "
                       "and this one model is used at every length)" if positions > 512 else
                       f"{positions} positions as the real model")
                    + ", attention dropout 0, hidden dropout "
                    f"{cfg.get('hidden_dropout_prob')}; `BertModel` without pooler; loss = mean squared "
                    "readout of the last hidden state along a fixed direction.")
        else:
            note = (f"hidden {cfg.get('hidden_size')}, {cfg.get('num_attention_heads')} heads, "
                    f"{cfg.get('num_key_value_heads')} key/value heads, "
                    f"{cfg.get('num_hidden_layers')} layers, "
                    f"intermediate {cfg.get('intermediate_size')}, vocab {cfg.get('vocab_size')}, tied "
                    "embeddings; `LlamaForCausalLM`; loss = causal-LM loss on the inputs.")
        lines += [
            f"Random-init model: {note} {info.get('parameters', 0):,} parameters; budget "
            f"{info.get('budget', 0):,} = {info.get('budget_arg')} of "
            f"{info.get('reference_parameters', 0):,} "
            "(the real model's count).",
            "",
            "| method | trainable | what was built |",
            "|---|---:|---|",
        ]
        for name, m in info.get("methods", {}).items():
            if "error" in m:
                lines.append(f"| {name} | | **cannot build**: {m['error']} |")
            else:
                lines.append(f"| {name} | {m.get('trainable', 0):,} | {m.get('description', '')} |")
        rows = [r for r in report["training"] if r["model"] == model_name]
        lengths = sorted({r["length"] for r in rows})
        names = list(dict.fromkeys(r["method"] for r in rows))
        table = {(r["method"], r["length"]): r for r in rows}
        for length in lengths:
            floor = table.get(("floor", length))
            for name in names:
                row = table.get((name, length))
                if row and floor and floor["status"] == "ok" and row["status"] == "ok":
                    row["_floor_extra"] = floor["step_extra_bytes"] if name != "floor" else None
        header = "| method | " + " | ".join(f"L={n}" for n in lengths) + " |"
        rule = "|---|" + "---:|" * len(lengths)
        for what, caption in (("time", "Step time, ms (ratio to floor)"),
                              ("extra", "Step extra memory, MiB (ratio to floor's)"),
                              ("peak", "Peak memory = resting footprint + step extra, MiB "
                                       "(ratio to floor's)")):
            lines += ["", f"{caption}:", "", header, rule]
            for name in names:
                cells = [_cell(table.get((name, n)), what) for n in lengths]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        repeats = sorted({r.get("repeats") for r in rows if r["status"] == "ok" and r.get("repeats")})
        if repeats:
            lines += ["", f"Timed rounds per cell: {', '.join(map(str, repeats))}."]
        problems = [r for r in rows if r["status"] == "error"]
        skipped = sorted({r["length"] for r in rows if r["status"] == "skipped"})
        if skipped:
            lines += ["", f"Skipped for the deadline: lengths {', '.join(map(str, skipped))}."]
        if problems:
            lines += ["", "Errors:", ""]
            lines += [f"- {r['method']} at L={r['length']}: {r['error']}" for r in problems]
        for row in rows:
            row.pop("_floor_extra", None)
        lines.append("")
    gen = report.get("generation", [])
    if gen or report.get("generation_info", {}).get("methods"):
        gi = report["generation_info"]
        lines += [
            "## Cached generation: SmolLM2-135M-shaped Llama",
            "",
            f"Random-init model as above, eval mode; greedy `model.generate(use_cache=True)`, prompt "
            f"{settings['gen_prompt']} random tokens, {settings['gen_new_tokens']} new tokens (forced: "
            f"`min_new_tokens`); one warm-up round, then {settings['gen_repeats']} interleaved rounds. "
            "Per-token latency: median gap between consecutive new tokens reaching a streamer "
            "(generate synchronises for each token), median over rounds; first token = prompt "
            f"processing + first token. Adapters at the budget {gi.get('budget', 0):,}; LoRA's B starts "
            "at zero as in training, which changes no cost.",
            "",
        ]
        for name, text in gi.get("methods", {}).items():
            lines.append(f"- {name}: {text}")
        lines += ["", "| method | batch | ms / new token (ratio to base) | first token ms | total ms |",
                  "|---|---:|---:|---:|---:|"]
        for r in gen:
            if r["status"] != "ok":
                lines.append(f"| {r['method']} | {r.get('batch', '')} | {r['status']}: {r.get('error', '')} "
                             "| | |")
                continue
            lines.append(f"| {r['method']} | {r['batch']} | {ms(r.get('median_per_token_s'), 2)}"
                         f"{_x(r.get('per_token_ratio_to_base'))} | {ms(r.get('median_first_token_s'), 1)} "
                         f"| {ms(r.get('median_total_s'), 1)} |")
        lines.append("")
    lines += [
        "## Machine",
        "",
        f"- {device}; {env['cpu_count']} CPUs ({env.get('cpu_model')}), {env['platform']}, "
        f"Python {env['python']}",
        f"- torch {env['torch']}" + (f" (CUDA {env['cuda']})" if env.get("cuda") else "")
        + f", transformers {env['transformers']}, peft {env['peft']}, inducer {env['inducer']}",
        f"- settings: `{json.dumps(settings)}`",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict, out: Path | None) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    texts = {"cost.json": json.dumps(report, indent=2) + "\n", "cost.md": render_markdown(report)}
    for name, text in texts.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="weights and activations (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(ALL_METHODS),
                        help="training methods (floor is always added)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument("--batch", type=int, default=None,
                        help="training batch (default: 8 on cuda, 2 on cpu)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds per length (default: %(default)s)")
    parser.add_argument("--budget", default="0.5%", help="per-method budget: count or %% of the real model")
    parser.add_argument("--no-generation", action="store_true", help="skip the cached-generation part")
    parser.add_argument("--gen-only", action="store_true", help="only the cached-generation part")
    parser.add_argument("--gen-methods", nargs="+", choices=GENERATION_METHODS,
                        default=list(GENERATION_METHODS))
    parser.add_argument("--gen-batches", type=int, nargs="+", default=None,
                        help="generation batch sizes (default: 1 8 on cuda, 1 on cpu)")
    parser.add_argument("--gen-prompt", type=int, default=64)
    parser.add_argument("--gen-new-tokens", type=int, default=64)
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--deadline-seconds", type=float, default=None,
                        help="stop starting new work after this many seconds from start-up; what is done is "
                             "written (a block in progress finishes its warm-up and at least one round)")
    parser.add_argument("--sizes", default=str(DEFAULT_SIZES.relative_to(ROOT)),
                        help="JSON of preset sizes chosen by budget matching, reused instead of searching "
                             "('none' to search; default: %(default)s; --quick always searches)")
    parser.add_argument("--write-sizes", action="store_true",
                        help="add the sizes searched in this run to the --sizes file")
    parser.add_argument("--sizes-only", action="store_true",
                        help="only run budget matching for every preset on --models (on the meta device, no "
                             "measuring) and write the --sizes file")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on cpu (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: benchmarks/results; --quick writes nothing "
                             "without it)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only re-render cost.md from a cost.json")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny models, lengths 16 32, 2 rounds, batch 1, 8+8 generation "
                             "tokens")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return args
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    args.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[args.dtype]
    if args.dtype is None:
        args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    if args.quick:
        args.lengths = [16, 32] if args.lengths == list(DEFAULT_LENGTHS) else args.lengths
        args.repeats, args.batch = min(args.repeats, 2), args.batch or 1
        args.gen_prompt, args.gen_new_tokens, args.gen_repeats = 8, 8, 1
        args.gen_batches = args.gen_batches or [1]
        if args.budget == "0.5%":
            args.budget = "5%"  # tiny models: 0.5% is below some methods' smallest size
    elif args.out is None:
        args.out = ROOT / "benchmarks" / "results"
    args.batch = args.batch or (8 if args.device == "cuda" else 2)
    args.gen_batches = args.gen_batches or ([1, 8] if args.device == "cuda" else [1])
    args.methods = ["floor", *[m for m in dict.fromkeys(args.methods) if m != "floor"]]
    args.lengths = sorted(set(args.lengths))
    if min(args.lengths) < 2 or args.batch < 1 or args.repeats < 1 or args.gen_repeats < 1:
        parser.error("lengths must be >= 2, batch and repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        args.from_json.with_name("cost.md").write_text(render_markdown(report))
        print(f"wrote {args.from_json.with_name('cost.md')} from {args.from_json}")
        return report
    if args.device == "cpu" or args.threads:
        torch.set_num_threads(args.threads or 1)
    clock = Deadline(args.deadline_seconds, start=_START)
    global SIZES
    sizes_path = None if args.quick or args.sizes.lower() == "none" else Path(args.sizes)
    if sizes_path is not None and not sizes_path.is_absolute() and not sizes_path.exists():
        sizes_path = ROOT / sizes_path
    SIZES = Sizes(sizes_path)
    report: dict = {
        "environment": environment(args),
        "settings": {
            "device": args.device, "dtype": str(args.dtype).removeprefix("torch."), "models": args.models,
            "methods": args.methods, "lengths": args.lengths, "batch": args.batch, "repeats": args.repeats,
            "budget": args.budget, "gen_methods": args.gen_methods, "gen_batches": args.gen_batches,
            "gen_prompt": args.gen_prompt, "gen_new_tokens": args.gen_new_tokens,
            "gen_repeats": args.gen_repeats, "deadline_seconds": args.deadline_seconds, "seed": args.seed,
            "quick": args.quick, "random_init": True, "sizes_file": str(sizes_path) if sizes_path else None,
        },
        "models": {}, "training": [], "generation_info": {}, "generation": [], "complete": False,
    }

    def save() -> None:
        report["wall_s"] = clock.elapsed()
        write_report(report, args.out)

    if args.sizes_only:
        search_sizes(args)
        return report

    # Order: the small model's training, then generation (a fixed, bounded cost), then the large
    # model's training, whose long lengths are what the deadline cuts first.
    plan: list[tuple[str, Callable[[], None]]] = []
    if not args.gen_only and "minilm" in args.models:
        plan.append(("train minilm", lambda: train_model("minilm", args, clock, report, save)))
    if not args.no_generation and "smollm2" in args.models:
        plan.append(("generation", lambda: run_generation(args, clock, report, save)))
    if not args.gen_only and "smollm2" in args.models:
        plan.append(("train smollm2", lambda: train_model("smollm2", args, clock, report, save)))
    for label, part in plan:
        if clock.left() <= 0:
            print(f"[{clock.elapsed():6.1f}s] {label}: skipped (deadline)", flush=True)
            report.setdefault("skipped_parts", []).append(label)
            continue
        try:
            part()
        except Exception as err:  # noqa: BLE001  (e.g. out of memory while building)
            report.setdefault("part_errors", {})[label] = _error_text(err)
            print(f"[{clock.elapsed():6.1f}s] {label} failed: {_error_text(err)}", flush=True)
            if args.verbose:
                traceback.print_exc()
        save()
    report["complete"] = not report.get("skipped_parts") and not any(
        r["status"] == "skipped" for r in report["training"] + report["generation"])
    save()
    if args.write_sizes:
        SIZES.write()
    if args.out is None:
        print(render_markdown(report))
    else:
        print(f"wrote {args.out / 'cost.json'} and {args.out / 'cost.md'} ({report['wall_s']:.0f}s)")
    return report


if __name__ == "__main__":
    main()
