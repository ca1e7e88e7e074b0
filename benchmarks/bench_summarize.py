"""Speed of the summarize stage.

1. extractive: 10,000 synthetic reports (TCGA-length, 400-1,500 words), budget 35 (target: under 60 s on 2 cores).
2. openai backend: 1,000 requests to a chat-completions server on 127.0.0.1 that answers after
   50 ms, at concurrency 32 (target: under 5 s). The server runs in its own process, so its work
   does not share this process's GIL.
3. --local: the bundled SmolLM2-135M GGUF on a few reports (load time, seconds per case and its
   summaries, to judge quality by eye). Not part of the targets.

    python benchmarks/bench_summarize.py [--reports 10000] [--requests 1000] [--local 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from histoldm.fileio import read_jsonl
from histoldm.summaries.config import SummarizeConfig
from histoldm.summaries.summarize import run_summarize
from histoldm.summaries.synthetic import make_synthetic_reports

# States no finding a synthetic report could contradict, so every case costs one request (each reply
# is still checked against its report, which is part of the client's work being timed).
REPLY = "Invasive carcinoma, Nottingham grade 2; growth in nests and cords."


def _serve(port_queue: multiprocessing.Queue, latency_s: float) -> None:
    body = json.dumps(
        {
            "id": "bench",
            "object": "chat.completion",
            "created": 0,
            "model": "bench",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 600, "completion_tokens": 40, "total_tokens": 640},
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
        disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms a request)

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def _write_reports(path: Path, n: int, seed: int) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in make_synthetic_reports(n, seed)), encoding="utf-8")


def bench_extractive(folder: Path, n: int) -> dict:
    _write_reports(folder / "reports.jsonl", n, seed=0)
    cfg = SummarizeConfig(input=folder / "reports.jsonl", out=folder / "extractive.jsonl", budget=35)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_summarize(cfg)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    tokens = [r["tokens"] for r in read_jsonl(cfg.out)]
    return {
        "reports": n,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "per_s": round(n / wall),
        "counts": result.counts,
        "max_tokens": max(tokens),
        "mean_tokens": round(sum(tokens) / len(tokens), 1),
    }


def bench_server(folder: Path, n: int, latency_s: float, concurrency: int) -> dict:
    _write_reports(folder / "server_reports.jsonl", n, seed=1)
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports, latency_s), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}/v1"
        warm_started = time.perf_counter()  # one-time start-up, timed apart from the requests
        import openai  # noqa: F401

        from histoldm.text.tokenizer import clip_tokenizer

        clip_tokenizer()
        startup = time.perf_counter() - warm_started
        cfg = SummarizeConfig(
            input=folder / "server_reports.jsonl",
            out=folder / "server.jsonl",
            budget=35,
            backend="openai",
            model="bench",
            base_url=url,
            api_key_env="HISTOLDM_BENCH_NO_KEY",
            concurrency=concurrency,
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        result = run_summarize(cfg)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        server.terminate()
        server.join()
    ideal = n * latency_s / concurrency
    return {
        "requests": n,
        "latency_ms": latency_s * 1000,
        "concurrency": concurrency,
        "startup_s": round(startup, 2),
        "wall_s": round(wall, 2),
        "client_cpu_s": round(cpu, 2),
        "ideal_s": round(ideal, 2),
        "counts": result.counts,
        "usage": result.usage,
    }


def bench_local(folder: Path, n: int) -> dict:
    _write_reports(folder / "local_reports.jsonl", n, seed=2)
    cfg = SummarizeConfig(
        input=folder / "local_reports.jsonl",
        out=folder / "local.jsonl",
        budget=35,
        backend="local",
        max_attempts=2,
        concurrency=1,
    )
    started = time.perf_counter()
    result = run_summarize(cfg)
    wall = time.perf_counter() - started
    records = list(read_jsonl(cfg.out))
    return {
        "cases": n,
        "wall_s_incl_model_load": round(wall, 1),
        "counts": result.counts,
        "summaries": [r["summary"] for r in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--local", type=int, default=0, help="also run the SmolLM2 GGUF on this many reports")
    args = parser.parse_args()
    results = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-summarize-") as tmp:
        folder = Path(tmp)
        if args.reports:
            results["extractive"] = bench_extractive(folder, args.reports)
            print("extractive:", results["extractive"], "(target < 60 s)", flush=True)
        if args.requests:
            results["openai_local_server"] = bench_server(
                folder, args.requests, args.latency_ms / 1000, args.concurrency
            )
            print("openai backend vs local server:", results["openai_local_server"], "(target < 5 s)", flush=True)
        if args.local:
            results["local_smollm2"] = bench_local(folder, args.local)
            print("local SmolLM2:", json.dumps(results["local_smollm2"], indent=1), flush=True)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
