"""`make bench`: direct vs this gateway vs the LiteLLM proxy, in one run (docs/performance.md).

Starts the fake upstream (bench/upstream.py), the gateway (`manage.py serve --workers 2` on
PostgreSQL and Redis) and, when bench/.litellm-venv holds it, the LiteLLM proxy; drives each with
wrk (bench/chat.lua) through four cells (plain and 20-chunk streamed chat at concurrency 1 and 64)
plus the time to the first streamed chunk (a small httpx client), reads CPU and memory from /proc,
checks one UsageRecord per answered request, runs the memory check (RSS per worker after 10,000
requests and after a second 10,000), and writes the table to bench/results/<timestamp>.md and .json.

    .venv/bin/python bench/run.py [--duration 5] [--no-litellm] [--profile 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402  (bench/ is not a package: run as a script)
import servers  # noqa: E402
from servers import MODEL, Server  # noqa: E402

CELLS = [("chat", 1), ("chat", 64), ("stream", 1), ("stream", 64)]
RESULTS = servers.BENCH / "results"


def wrk(server: Server, *, stream: bool, connections: int, duration: float) -> dict:
    return servers.wrk_result(servers.wrk_start(
        server, stream=stream, connections=connections, duration=duration, threads=min(connections, 2)))


def measure(server: Server, *, stream: bool, connections: int, duration: float) -> dict:
    """One cell: wrk, with the server's CPU time (all its processes) before and after."""
    pids = server.pids()
    before = servers.cpu_seconds(pids)
    result = wrk(server, stream=stream, connections=connections, duration=duration)
    after_pids = server.pids()
    result["cpu_s"] = servers.cpu_seconds(pids) - before
    result["pids_changed"] = sorted(after_pids) != sorted(pids)
    result["cpu_ms_per_req"] = 1000 * result["cpu_s"] / max(result["requests"], 1)
    return result


def request_body(stream: bool) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say twenty words, please."}],
            "max_tokens": 64, "temperature": 0.7}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def check_answers(server: Server) -> None:
    """One plain and one streamed answer, as a client sees them, before any measurement."""
    headers = {"authorization": f"Bearer {server.key}"}
    plain = httpx.post(server.chat_url, json=request_body(False), headers=headers, timeout=30)
    plain.raise_for_status()
    assert plain.json()["choices"][0]["message"]["content"].startswith("word0"), plain.text
    assert plain.headers.get("x-gateway-cache") in (None, "miss"), "the benchmark must not measure cache hits"
    streamed = httpx.post(server.chat_url, json=request_body(True), headers=headers, timeout=30)
    streamed.raise_for_status()
    content = [json.loads(line[6:]) for line in streamed.text.splitlines()
               if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"].get("content") for e in content if e.get("choices")]
    assert len([d for d in deltas if d]) == 20, f"{server.name}: {len(deltas)} content chunks, not 20"


def first_chunk(server: Server, *, duration: float, limit: int = 2000) -> dict:
    """Time to the first SSE event of a streamed request at concurrency 1 (ms), for `duration`."""
    headers = {"authorization": f"Bearer {server.key}"}
    times, errors = [], 0
    deadline = time.monotonic() + duration
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline and len(times) < limit:
            start = time.perf_counter()
            first = None
            with client.stream("POST", server.chat_url, json=request_body(True), headers=headers) as response:
                if response.status_code != 200:
                    errors += 1
                    response.read()
                    continue
                for line in response.iter_lines():
                    if first is None and line.startswith("data:"):
                        first = time.perf_counter() - start
            if first is None:
                errors += 1
            else:
                times.append(1000 * first)
    times.sort()
    return {"requests": len(times), "errors": errors, "p50": statistics.median(times),
            "p99": times[min(len(times) - 1, int(len(times) * 0.99))]}


def memory(server: Server) -> dict:
    workers = server.workers()
    return {"workers_mb": [round(servers.rss_mb(pid), 1) for pid in workers],
            "root_mb": round(servers.rss_mb(server.process.pid), 1)}


def memory_run(server: Server, *, requests: int, connections: int = 16) -> dict:
    """At least `requests` plain requests (in 5 s wrk runs), then RSS per worker.

    Concurrency 16, not 64: the gateway holds about one PostgreSQL connection per request in
    flight, and minutes at 64 exhaust a default `max_connections` (100) shared with anything else."""
    answered = errors = runs = 0
    while answered < requests:
        result = wrk(server, stream=False, connections=connections, duration=5)
        runs += 1
        answered += result["answered"]
        errors += result["errors"]
        if result["requests"] == 0:
            raise RuntimeError(f"{server.name} answered nothing during the memory run")
    return {"requests": answered, "errors": errors, "runs": runs, **memory(server)}


def usage_records(server: Server, *, expected: int, slack: int) -> dict:
    """UsageRecords by status, polled until the count is stable (records are written after the answer)."""
    import psycopg

    query = "SELECT status, count(*) FROM accounting_usagerecord GROUP BY status"
    counts, stable_since, last = {}, time.monotonic(), -1
    deadline = time.monotonic() + 30
    with psycopg.connect(server.extra["database_url"], autocommit=True) as conn:
        while time.monotonic() < deadline:
            counts = dict(conn.execute(query).fetchall())
            total = sum(counts.values())
            if total != last:
                last, stable_since = total, time.monotonic()
            elif total >= expected and time.monotonic() - stable_since > 2:
                break
            time.sleep(0.5)
    total = sum(counts.values())
    return {"by_status": counts, "total": total, "answered": expected,
            "ok": expected <= total <= expected + slack}


def run_server(server: Server, *, duration: float, warmup: float) -> dict:
    check_answers(server)
    answered = 2
    slack = 0  # requests wrk cut at the end of a run: recorded as cancelled, never answered
    for stream in (False, True):
        warm = wrk(server, stream=stream, connections=8, duration=warmup)
        answered += warm["answered"]
        slack += 8
    cells = {}
    for kind, connections in CELLS:
        result = measure(server, stream=kind == "stream", connections=connections, duration=duration)
        answered += result["answered"]
        slack += connections
        cells[f"{kind} c{connections}"] = result
        print(f"  {server.name:8} {kind:6} c={connections:<3} {result['rps']:8.1f} req/s  p50 {result['p50'] / 1000:7.2f} ms"
              f"  p99 {result['p99'] / 1000:7.2f} ms  cpu {result['cpu_ms_per_req']:6.2f} ms/req  errors {result['errors']}",
              flush=True)
    ttfc = first_chunk(server, duration=duration)
    answered += ttfc["requests"]
    cells["first chunk c1"] = ttfc
    print(f"  {server.name:8} first chunk c=1  p50 {ttfc['p50']:.2f} ms  p99 {ttfc['p99']:.2f} ms", flush=True)
    return {"cells": cells, "memory": memory(server), "answered": answered, "slack": slack}


def profile(server: Server, *, seconds: float, out: Path, gil: bool = False, connections: int = 64) -> dict:
    """py-spy on every worker during a plain-chat wrk run (c=64 unless told); collapsed stacks per worker.

    By default py-spy samples every thread that is not idle, waits for PostgreSQL included (a
    wall-clock view of the busy threads); with `gil` only the thread holding the GIL: Python's own
    CPU time."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy (a dev tool, not a dependency)")
    spies, files = [], []
    for pid in server.workers():
        path = out.with_name(f"{out.name}-{pid}.txt")
        files.append(path)
        spies.append(subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200", "--nonblocking",
             "--format", "raw", *(["--gil"] if gil else []), "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)
    result = measure(server, stream=False, connections=connections, duration=seconds)
    for spy_process in spies:
        spy_process.wait(timeout=120)
    return {"cell": result, "stacks": [str(f) for f in files], "gil": gil, "connections": connections}


def main() -> int:
    parser = argparse.ArgumentParser(description="The gateway's benchmark (docs/performance.md).")
    parser.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", 5)),
                        help="seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server and mode")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway_bench"),
        help="dropped and created afresh for each run")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7"))
    parser.add_argument("--memory-requests", type=int, default=10_000,
                        help="requests per memory-check run (two runs; 0 skips the check)")
    parser.add_argument("--no-litellm", action="store_true", help="leave the LiteLLM column out")
    parser.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                        help="also profile the gateway's workers with py-spy under plain chat")
    parser.add_argument("--profile-connections", type=int, default=64, metavar="N",
                        help="wrk's connections while profiling (1 for where a lone request's CPU goes)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="profile only the thread holding the GIL (Python CPU time, no waits)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--gateway-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting (environment variable) of the gateway over the production ones, to "
                             "measure an option, e.g. GATEWAY_DB_THREADS=4; repeatable")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk (make bench does it)", file=sys.stderr)
        return 2

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = servers.workdir_create()
    data = {"started": stamp, "duration": args.duration, "workers": args.workers, "uptime_before": _uptime(),
            "nproc": os.cpu_count(), "servers": {}, "notes": []}
    busy = servers.busy_elsewhere()
    if busy:
        data["notes"].append("Busy before the run (share of a core over one second): " + "; ".join(
            f"{share:.0%} pid {pid} `{command}`" for share, pid, command in busy[:5]
        ) + ". Those processes compete with the servers measured here.")
        print("warning: " + data["notes"][-1], file=sys.stderr, flush=True)
    started: list[Server] = []
    try:
        upstream = servers.upstream_start(workdir)
        started.append(upstream)
        print(f"upstream on {upstream.base_url}; workdir {workdir}", flush=True)
        data["servers"]["direct"] = run_server(upstream, duration=args.duration, warmup=args.warmup)

        settings = dict(setting.split("=", 1) for setting in args.gateway_setting)
        gateway = servers.gateway_start(upstream, database_url=args.database_url, redis_url=args.redis_url,
                                        workdir=workdir, workers=args.workers, settings=settings)
        data["gateway_server"] = "uvicorn"
        data["gateway_settings"] = settings
        started.append(gateway)
        print(f"gateway on {gateway.base_url} (workers {gateway.workers()})", flush=True)
        result = run_server(gateway, duration=args.duration, warmup=args.warmup)
        data["servers"]["gateway"] = result
        if args.profile:
            stacks = args.output / f"{stamp}-profile"
            args.output.mkdir(parents=True, exist_ok=True)
            data["profile"] = profile(gateway, seconds=args.profile, out=stacks, gil=args.profile_gil,
                                      connections=args.profile_connections)
            result["answered"] += data["profile"]["cell"]["answered"]
            result["slack"] += args.profile_connections

        if args.no_litellm:
            data["notes"].append("LiteLLM left out (--no-litellm).")
        elif not servers.litellm_available():
            data["notes"].append("LiteLLM is not installed in bench/.litellm-venv (make bench installs it when "
                                 "PyPI is reachable): no LiteLLM column.")
        else:
            litellm = servers.litellm_start(upstream, workdir=workdir, workers=args.workers)
            started.append(litellm)
            data["litellm_version"] = litellm.extra["version"]
            print(f"litellm {litellm.extra['version']} on {litellm.base_url} (workers {litellm.workers()})", flush=True)
            data["servers"]["litellm"] = run_server(litellm, duration=args.duration, warmup=args.warmup)
            litellm.stop()  # before the gateway's memory check, which wants the machine to itself
        if args.memory_requests:
            first = memory_run(gateway, requests=args.memory_requests)
            second = memory_run(gateway, requests=args.memory_requests)
            data["memory_check"] = {"first": first, "second": second}
            result["answered"] += first["requests"] + second["requests"]
            result["slack"] += 16 * (first["runs"] + second["runs"])  # one cut per 5 s wrk run
            print(f"  memory after {first['requests']} requests: {first['workers_mb']} MB;"
                  f" after {second['requests']} more: {second['workers_mb']} MB", flush=True)
        data["usage_records"] = usage_records(gateway, expected=result["answered"], slack=result["slack"])
        print(f"  usage records: {data['usage_records']}", flush=True)
        gateway.stop()
    finally:
        for server in reversed(started):
            server.stop()
    data["uptime_after"] = _uptime()

    markdown = report.render(data)
    print("\n" + markdown)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{stamp}.md").write_text(markdown)
    (args.output / f"{stamp}.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"written: {args.output / stamp}.md and .json (logs in {workdir})")
    errors = sum(cell.get("errors", 0) for s in data["servers"].values() for cell in s["cells"].values())
    return 1 if errors or not data["usage_records"]["ok"] else 0


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
