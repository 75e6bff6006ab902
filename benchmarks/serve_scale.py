"""Serving many adapters: an adapter store of N tiny adapters, a Zipf request distribution over them,
C concurrent clients; one ``inducer serve`` process with the LRU (``--max-adapters``) at several
sizes, and 2 Ray Serve replicas (``inducer serve --ray``) against one process, in one run.

Run from the repository root (Ray from ``pip install 'inducer[ray]'`` for the Ray rows):

    python benchmarks/serve_scale.py                      # writes benchmarks/results/serve_scale.*
    python benchmarks/serve_scale.py --adapters 200 --requests 10 --sizes 16 64 --no-ray --quick

Every configuration gets the same seeded request sequence (adapter by Zipf rank, prompt, greedy,
``ignore_eos``, ``--max-tokens`` tokens), split round-robin over the clients, each client sending
its requests one after the other. Reported per configuration: answered, throughput (completion
tokens per second of wall time), p50 / p99 latency, the store's hit rate (1 - loads / requests,
from the servers' ``/metrics``), evictions, resident memory (RSS of the server, or of all Ray
replicas and the ingress), and how many answers equal the adapter's offline ``generate`` (all
must). Bounded: each configuration stops sending after ``--time-limit`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from lib.formatting import number, table
from lib.stamp import environment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' tiny offline model and tokenizer

import inducer  # noqa: E402
from tests.tiny import save_tiny  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = ["the food is", "a great place to eat", "name the pub near the river", "the service was slow and"]


def prepare(work: Path, count: int) -> tuple[Path, Path]:
    """The tiny GPT-2 base and a store of ``count`` adapters (inducer r_k=r_v=2, random values)."""
    from inducer.data.base_models import load_model
    from inducer.io.adapter_format import owned_names

    base = save_tiny("gpt2", work / "base")
    store = work / "store"
    model = load_model(str(base), "generation").model
    inducer.attach(model, [inducer.InducerConfig(r_k=2, r_v=2)])
    owned = owned_names(model)
    for i in range(count):
        generator = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():  # sizeable values: each adapter answers differently
            for name, p in model.named_parameters():
                if name in owned:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        inducer.save_adapter(model, store / f"a{i}")
    return base, store


def requests(count: int, adapters: int, zipf_s: float, seed: int) -> list[tuple[str, str]]:
    """(adapter, prompt) pairs: adapter rank by Zipf(s) over ``adapters`` ranks (a random order of
    names, so that rank is not the folder order)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, adapters + 1) ** zipf_s
    names = rng.permutation(adapters)
    ranks = rng.choice(adapters, size=count, p=weights / weights.sum())
    return [(f"a{names[r]}", PROMPTS[int(rng.integers(len(PROMPTS)))]) for r in ranks]


def offline(base: Path, store: Path, pairs: set[tuple[str, str]], max_tokens: int) -> dict:
    """Greedy ``model.generate`` of every (adapter, prompt) pair, each adapter loaded alone."""
    from inducer.data.base_models import load_model

    loaded = load_model(str(base), "generation")
    plain, tokenizer, expected = loaded.model.eval(), loaded.tokenizer, {}
    for adapter in sorted({a for a, _ in pairs}):
        model = inducer.load_adapter(copy.deepcopy(plain), store / adapter).eval()
        for prompt in sorted(p for a, p in pairs if a == adapter):
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=max_tokens, eos_token_id=None)  # fmt: skip
            expected[adapter, prompt] = out[0, ids.shape[1]:].tolist()
    return expected


class Server:
    """``inducer serve`` (or ``inducer serve --ray``) on a free loopback port, its log in a file."""

    def __init__(self, base: Path, store: Path, size: int, args, log: Path, replicas: int = 0):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url, self.ray = f"http://127.0.0.1:{port}", replicas > 0
        command = [sys.executable, "-m", "inducer", "--threads", "1", "serve", "--model", str(base),
                   "--base-name", "base", "--port", str(port), "--device", "cpu",
                   "--adapter-store", str(store),
                   "--max-adapters", str(size), "--max-batch-size", str(args.max_batch_size),
                   "--max-wait-ms", str(args.max_wait_ms), "--max-tokens", str(args.max_tokens)]  # fmt: skip
        if replicas:
            command += ["--ray", "--replicas", str(replicas)]
        self.log = log.open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + (240 if replicas else 120)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited {self.process.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not start; see {log}")

    def metrics(self) -> list[str]:
        """Each process's /metrics (Ray: each replica's, told apart by x-inducer-replica)."""
        seen: dict[str, str] = {}
        for _ in range(40 if self.ray else 1):
            response = httpx.get(f"{self.url}/metrics", timeout=10)
            seen[response.headers.get("x-inducer-replica", "one")] = response.text
            if not self.ray or len(seen) >= 2:
                break
        return list(seen.values())

    def rss_bytes(self) -> int:
        """Resident memory of the server process, or of its Ray replicas and ingress."""
        if not self.ray:
            return _rss(self.process.pid)
        total = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ServeReplica:inducer:" in cmdline:
                total += _rss(int(pid))
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: its Ray processes too
                self.process.wait()
        self.log.close()


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) * 1024 if found else 0


def _total(texts: list[str], series: str) -> float:
    pattern = re.compile(rf"^{re.escape(series)} (\S+)$", re.M)
    return sum(float(m.group(1)) for text in texts for m in pattern.finditer(text))


async def _drive(url: str, work: list[tuple[str, str]], clients: int, max_tokens: int, time_limit: float):
    """Send ``work`` from ``clients`` concurrent clients; (latency, adapter, prompt, tokens) of each."""
    results: list = []
    stop_at = time.monotonic() + time_limit

    async def client(index: int, http: httpx.AsyncClient) -> None:
        for adapter, prompt in work[index::clients]:
            if time.monotonic() > stop_at:
                return
            body = {"model": adapter, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "return_token_ids": True}  # fmt: skip
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/completions", json=body)
            ok = response.status_code == 200
            tokens = response.json()["choices"][0]["token_ids"] if ok else None
            results.append((time.perf_counter() - started, adapter, prompt, tokens,
                            None if ok else f"{response.status_code} {response.text[:160]}"))

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return results, time.perf_counter() - started


def run_config(label: str, server: Server, work, expected, args) -> dict:
    results, seconds = asyncio.run(_drive(server.url, work, args.clients, args.max_tokens, args.time_limit))
    texts = server.metrics()
    latencies = sorted(r[0] for r in results)
    answered = [r for r in results if r[3] is not None]
    loads = _total(texts, 'inducer_adapter_loads_total{result="ok"}')
    row = {
        "config": label,
        "sent": len(results),
        "answered": len(answered),
        "equal_offline": sum(r[3] == expected[r[1], r[2]] for r in answered),
        "tokens_per_s": sum(len(r[3]) for r in answered) / seconds,
        "requests_per_s": len(answered) / seconds,
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
        "loads": loads,
        "hit_rate": 1 - loads / len(results) if results else None,
        "evictions": _total(texts, "inducer_adapter_evictions_total"),
        "rss_mib": server.rss_bytes() / 2**20,
        "seconds": seconds,
        "failures": sorted({r[4] for r in results if r[4]})[:5],
    }
    print(json.dumps(row), flush=True)
    return row


def render(report: dict) -> str:
    rows = [(r["config"], f"{r['answered']}/{r['sent']}", f"{r['equal_offline']}/{r['answered']}",
             number(r["tokens_per_s"], 1), number(r["p50_s"] and r["p50_s"] * 1e3, 0),
             number(r["p99_s"] and r["p99_s"] * 1e3, 0), number(r["hit_rate"] * 100, 1) + "%",
             f"{r['loads']:.0f}", f"{r['evictions']:.0f}", number(r["rss_mib"], 0))
            for r in report["results"]]  # fmt: skip
    setup = report["setup"]
    lines = [
        "# Serving many adapters: on-demand store, LRU sizes, Ray replicas", "",
        f"{setup['adapters']} adapters in a store (tiny GPT-2, inducer r_k=r_v=2), Zipf "
        f"s={setup['zipf_s']} over them, {setup['requests']} greedy requests of {setup['max_tokens']} "
        f"tokens from {setup['clients']} "
        f"concurrent clients ({setup['distinct_adapters']} distinct adapters requested); the same requests "
        "for every configuration, one after another in one run, on loopback; one PyTorch thread per "
        "server or replica. `hit rate` = 1 - loads / requests.", "",
        *table(["configuration", "answered", "= offline", "tokens/s", "p50 ms", "p99 ms", "hit rate", "loads",
                "evictions", "RSS MiB"], rows),
        "", *report.get("notes", []), "", f"Command: `{report['environment'].get('command', '')}`",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=30, help="per client")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256], help="--max-adapters values")
    parser.add_argument("--ray-size", type=int, default=64, help="--max-adapters of each Ray replica")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--time-limit", type=float, default=240, help="seconds of load per configuration")
    parser.add_argument("--quick", action="store_true", help="print only; write no results")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    total = args.requests * args.clients
    work = requests(total, args.adapters, args.zipf_s, seed=0)
    report = {"environment": environment(), "results": [], "notes": [],
              "setup": {"adapters": args.adapters, "zipf_s": args.zipf_s, "requests": total,
                        "clients": args.clients, "max_tokens": args.max_tokens,
                        "max_batch_size": args.max_batch_size,
                        "distinct_adapters": len({a for a, _ in work})}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="serve-scale-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        base, store = prepare(folder, args.adapters)
        print(f"saved {args.adapters} adapters in {time.perf_counter() - started:.1f} s", flush=True)
        expected = offline(base, store, set(work), args.max_tokens)
        configs = [(f"one process, LRU {size}", size, 0) for size in args.sizes]
        if not args.no_ray:
            configs.append((f"2 Ray replicas, LRU {args.ray_size} each", args.ray_size, 2))
            if args.ray_size not in args.sizes:
                configs.append((f"one process, LRU {args.ray_size}", args.ray_size, 0))
        for label, size, replicas in configs:
            server = Server(base, store, size, args, folder / f"{label.replace(' ', '_')}.log", replicas)
            try:
                report["results"].append(run_config(label, server, work, expected, args))
            finally:
                server.stop()
    one = next((r for r in report["results"] if r["config"] == f"one process, LRU {args.ray_size}"), None)
    ray_row = next((r for r in report["results"] if "Ray" in r["config"]), None)
    if one and ray_row:
        report["notes"].append(f"2 Ray replicas / one process at LRU {args.ray_size}: throughput "
                               f"{ray_row['tokens_per_s'] / one['tokens_per_s']:.2f}x, p50 "
                               f"{ray_row['p50_s'] / one['p50_s']:.2f}x, "
                               f"p99 {ray_row['p99_s'] / one['p99_s']:.2f}x.")  # fmt: skip
    text = render(report)
    print(text)
    if not args.quick:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "serve_scale.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out_dir / "serve_scale.md").write_text(text)


if __name__ == "__main__":
    main()
