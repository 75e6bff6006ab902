"""Load test of ``inducer serve``: C concurrent clients over K adapters, the server's continuous
batching against one-request-at-a-time serving of the same load, in one run, on loopback only.

Run from the repository root:

    python benchmarks/serve_load.py           # tiny and SmolLM2-135M; writes benchmarks/results/serve_load.*
    python benchmarks/serve_load.py --quick   # smoke run: the tiny model, a few requests; prints only
    python benchmarks/serve_load.py --models tiny --clients 8 --adapters 4 --requests 6 --max-tokens 32

For each model, K adapters (inducer, and inducer + LoRA, alternately; random tensors) are saved
next to the base; the same server command is started twice, ``--max-batch-size 1`` (the baseline:
one sequence at a time) and ``--max-batch-size B`` (continuous batching, requests for different
adapters routed per row in shared forward passes). In each of ``--rounds`` rounds, each of C
clients sends R requests one after the other, cycling over the adapters; every request is greedy
with ``ignore_eos``, so each one asks for exactly ``--max-tokens`` tokens. Reported: throughput
(completion tokens per second of wall time), p50 / p99 request latency, the mean decode batch size
(from ``/metrics``), that every request was answered exactly once, and that the batched answers
equal the one-at-a-time answers.

The two servers run side by side (an idle one takes no CPU) and get the load in turn, round by
round, so that noise from other work on the machine hits both alike. Bounded: at most C x R x
rounds requests per server, and no new request after ``--time-limit`` seconds per model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from lib.formatting import number, table
from lib.stamp import environment

import inducer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = [
    "The restaurant near the river serves",
    "Write one sentence about the weather today:",
    "List three fruits:",
    "The best way to learn a language is",
    "Once upon a time, in a small village,",
    "Translate to French: good morning",
]
THREADS_NOTE = (
    "One PyTorch thread in the server by default: on this shared 2-core machine, two threads made a "
    "tiny model's decode step about 15x slower (they stall on each other whenever another process holds "
    "a core); `--threads N` changes it."
)
TARGET_SPEEDUP = 3.0  # the target at 8 clients over 4 adapters
ADAPTER_CONFIGS = (
    [inducer.InducerConfig(r_k=2, r_v=4)],
    [inducer.InducerConfig(r_k=1, r_v=2), inducer.LoRAConfig(r=4)],
)


def prepare(model_key: str, folder: Path, adapters: int) -> tuple[str, dict[str, str]]:
    """The base model to serve and ``adapters`` saved adapters for it (name -> folder)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from inducer.data.base_models import load_model, resolve_model_path
    from inducer.io.adapter_format import owned_names

    if model_key == "tiny":  # a 2-layer Llama with SmolLM2's tokenizer
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"))
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        base = folder / "tiny-base"
        LlamaForCausalLM(config).save_pretrained(base)
        tokenizer.save_pretrained(base)
        base_name = str(base)
    else:
        base_name = model_key
    saved = {}
    for i in range(adapters):
        model = load_model(base_name, "generation").model
        inducer.attach(model, ADAPTER_CONFIGS[i % len(ADAPTER_CONFIGS)])
        generator = torch.Generator().manual_seed(i + 1)
        owned = owned_names(model)
        with torch.no_grad():  # small random tensors: each adapter answers differently, none degenerate
            for name, p in model.named_parameters():
                if name in owned:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        saved[f"a{i}"] = str(folder / f"adapter-{i}")
        inducer.save_adapter(model, saved[f"a{i}"])
    return base_name, saved


class Server:
    """An ``inducer serve`` process on a free loopback port, its log in a file."""

    def __init__(
        self, base: str, adapters: dict[str, str], batch: int, wait_ms: float, threads: int, log: Path
    ):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "inducer",
            "--threads",
            str(threads),
            "serve",
            "--model",
            base,
            "--base-name",
            "base",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-batch-size",
            str(batch),
            "--max-wait-ms",
            str(wait_ms),
            "--device",
            "cpu",
        ]
        for name, folder in adapters.items():
            command += ["--adapter", f"{name}={folder}"]
        self.log = log.open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"inducer serve exited {self.process.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"inducer serve did not start in 300 s; see {log}")

    def batch_totals(self) -> tuple[float, float]:
        """(decode steps, sequences summed over steps) so far."""
        lines = httpx.get(f"{self.url}/metrics", timeout=30).text.splitlines()
        values = dict(line.rsplit(" ", 1) for line in lines if line.startswith("inducer_batch_size_"))
        return float(values.get("inducer_batch_size_count", 0)), float(
            values.get("inducer_batch_size_sum", 0)
        )

    def stop(self) -> None:
        """SIGTERM (the server drains), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


async def _load(
    url: str, adapters: list[str], clients: int, requests: int, max_tokens: int, time_limit: float
) -> tuple[list[dict], float]:
    """C clients, each sending its requests one after another; every answer, and the wall time."""
    started = time.perf_counter()
    answers: list[dict] = []

    async def client(index: int, http: httpx.AsyncClient) -> None:
        for j in range(requests):
            if time.perf_counter() - started > time_limit:
                return
            adapter = adapters[(index + j) % len(adapters)]
            prompt = PROMPTS[(index * requests + j) % len(PROMPTS)]
            body = {
                "model": adapter,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "return_token_ids": True,
            }
            sent = time.perf_counter()
            response = await http.post(f"{url}/v1/completions", json=body)
            record = {
                "client": index,
                "request": j,
                "adapter": adapter,
                "prompt": prompt,
                "status": response.status_code,
                "latency_s": time.perf_counter() - sent,
            }
            if response.status_code == 200:
                data = response.json()
                record.update(
                    id=data["id"],
                    tokens=data["usage"]["completion_tokens"],
                    token_ids=data["choices"][0]["token_ids"],
                )
            answers.append(record)

    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*[client(i, http) for i in range(clients)])
    return answers, time.perf_counter() - started


def warm_up(server: Server, adapters: list[str]) -> None:
    """One short request per adapter: first-call costs out of the measurement."""
    for name in adapters:
        httpx.post(
            f"{server.url}/v1/completions",
            timeout=600,
            json={"model": name, "prompt": PROMPTS[0], "max_tokens": 2, "temperature": 0},
        )


def load_round(server: Server, adapters: list[str], args, seconds_left: float) -> dict:
    """One round of the load against a running server: its answers, wall time and decode steps."""
    steps0, rows0 = server.batch_totals()
    answers, wall = asyncio.run(
        _load(server.url, adapters, args.clients, args.requests, args.max_tokens, seconds_left)
    )
    steps1, rows1 = server.batch_totals()
    return {"answers": answers, "wall_s": wall, "steps": steps1 - steps0, "rows": rows1 - rows0}


def summarise(rounds: list[dict]) -> dict:
    """Throughput (all tokens over all rounds' wall time), latencies, batch size, completeness."""
    answers = [a for r in rounds for a in r["answers"]]
    wall, steps, rows = (sum(r[k] for r in rounds) for k in ("wall_s", "steps", "rows"))
    ok = [a for a in answers if a["status"] == 200]
    latencies = sorted(a["latency_s"] for a in ok)
    tokens = sum(a["tokens"] for a in ok)
    return {
        "rounds": len(rounds),
        "requests": len(answers),
        "answered_ok": len(ok),
        "answered_exactly_once": len(ok) == len(answers) and len({a["id"] for a in ok}) == len(ok),
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall else None,
        "round_tokens_per_s": [sum(a.get("tokens", 0) for a in r["answers"]) / r["wall_s"] for r in rounds],
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
        "mean_batch_size": rows / steps if steps else None,
        "outputs": {f"{a['adapter']}|{a['prompt']}": a["token_ids"] for a in ok},
    }


MODES = ("one at a time", "batched")


def run_model(model_key: str, args, work: Path) -> dict:
    """Both servers for one model, running side by side (an idle one takes no CPU), the load sent to
    each in turn, round by round, so that machine noise hits both alike."""
    folder = work / model_key
    folder.mkdir(parents=True)
    base, adapters = prepare(model_key, folder, args.adapters)
    names = list(adapters)
    result = {
        "model": model_key,
        "clients": args.clients,
        "adapters": len(names),
        "requests_per_client": args.requests * args.rounds,
        "max_tokens": args.max_tokens,
    }
    settings = {"one at a time": (1, 0), "batched": (args.max_batch_size, args.max_wait_ms)}
    servers: dict[str, Server] = {}
    rounds: dict[str, list[dict]] = {mode: [] for mode in MODES}
    started = time.perf_counter()
    try:
        for mode in MODES:
            batch, wait = settings[mode]
            servers[mode] = Server(base, adapters, batch, wait, args.threads, folder / f"server-{batch}.log")
            warm_up(servers[mode], names)
        for index in range(args.rounds):
            for mode in MODES:
                left = args.time_limit - (time.perf_counter() - started)
                if left <= 0:
                    break
                print(f"{model_key}: round {index + 1}, {mode}", flush=True)
                rounds[mode].append(load_round(servers[mode], names, args, left))
    finally:
        for server in servers.values():
            server.stop()
    for mode in MODES:
        result[mode] = summarise(rounds[mode])
    alone, batched = result["one at a time"], result["batched"]
    shared = set(alone["outputs"]) & set(batched["outputs"])
    result["batched_equals_alone"] = sum(alone["outputs"][k] == batched["outputs"][k] for k in shared)
    result["compared_outputs"] = len(shared)
    for mode in MODES:
        del result[mode]["outputs"]
    if alone["tokens_per_s"] and batched["tokens_per_s"]:
        result["speedup"] = batched["tokens_per_s"] / alone["tokens_per_s"]
    return result


def render(report: dict) -> str:
    """The markdown table."""
    rows = []
    for r in report["results"]:
        for mode in MODES:
            m = r[mode]
            rows.append(
                [
                    r["model"],
                    mode,
                    f"{r['clients']} x {r['adapters']}",
                    f"{m['answered_ok']}/{m['requests']}",
                    number(m["tokens_per_s"], 1),
                    number(m["p50_s"] and m["p50_s"] * 1e3, 0),
                    number(m["p99_s"] and m["p99_s"] * 1e3, 0),
                    number(m["mean_batch_size"], 2),
                    number(r.get("speedup"), 2) + "x" if mode == "batched" else "",
                ]
            )
    env = report["environment"]
    lines = [
        "# `inducer serve` under load",
        "",
        f"{env['date_utc']}, `{env['command']}`, commit {env['git_commit']}, {env['cpu_count']} CPU(s) "
        f"({env['cpu_model']}), torch {env['torch']}, {report['threads']} server thread(s). Loopback only; "
        f"greedy, `ignore_eos`, {report['max_tokens']} tokens per request.",
        "",
        *table(
            [
                "model",
                "serving",
                "clients x adapters",
                "answered",
                "tokens/s",
                "p50 ms",
                "p99 ms",
                "mean batch",
                "speedup",
            ],
            rows,
            align="llrrrrrrr",
        ),
        "",
        "Batched = continuous batching (`--max-batch-size "
        f"{report['max_batch_size']} --max-wait-ms {report['max_wait_ms']:g}`), requests for different "
        "adapters routed per row in shared forward passes; one at a time = `--max-batch-size 1`. "
        f"Target: >= {TARGET_SPEEDUP:g}x at 8 clients over 4 adapters. {THREADS_NOTE}",
        "",
    ]
    for r in report["results"]:
        lines.append(
            f"- {r['model']}: batched answers equal one-at-a-time answers for "
            f"{r['batched_equals_alone']} of {r['compared_outputs']} (adapter, prompt) pairs; "
            f"every request answered exactly once: "
            f"{r['one at a time']['answered_exactly_once'] and r['batched']['answered_exactly_once']}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "smollm2-135m"], help="tiny and/or smollm2-135m"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (C)")
    parser.add_argument("--adapters", type=int, default=4, help="adapters the clients cycle over (K)")
    parser.add_argument("--requests", type=int, default=2, help="requests per client in each round (R)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the two servers")
    parser.add_argument("--max-tokens", type=int, default=24, help="tokens per request")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="the server's PyTorch threads (see THREADS_NOTE)"
    )
    parser.add_argument("--time-limit", type=float, default=300.0, help="no new request after this (s)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 clients x 2 adapters; print only")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.models, args.clients, args.adapters, args.requests, args.rounds = ["tiny"], 4, 2, 2, 1
        args.max_tokens = 8
    report = {
        "environment": environment(),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="serve-load-") as work:
        for model_key in args.models:
            report["results"].append(run_model(model_key, args, Path(work)))
    text = render(report)
    print(text)
    if not args.quick:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out_dir / "serve_load.md").write_text(text)
        print(f"wrote {args.out_dir}/serve_load.json, serve_load.md")


if __name__ == "__main__":
    main()
