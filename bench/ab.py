"""`bench/ab.py`: this checkout's gateway against another revision's, both up at once.

A change worth a few percent is lost in a full `bench/run.py` run, whose cells are minutes apart
on a machine whose speed drifts by a third within the hour (docs/performance.md). Here the two
gateways meet the same machine at the same moment:

- **c=1**: one client sends plain requests to each in turn (A, B, B, A, ...), so every stretch of
  the machine's speed is shared: the p50 and p25 latency of each, and CPU per request.
- **under load**: wrk drives both at once, `--connections` each, for `--rounds` rounds of
  `--duration` seconds: CPU per request and req/s of each, per round and in all.

The other revision is checked out with `git worktree` into a temporary directory (removed at the
end) and runs from there with this checkout's virtualenv; both use this checkout's bench
configuration, so compare revisions whose `import_config` format is the same.

    .venv/bin/python bench/ab.py --base HEAD~1 [--requests 2000] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers  # noqa: E402  (bench/ is not a package: run as a script)
from run import request_body  # noqa: E402
from servers import Server  # noqa: E402


def lone_requests(gateways: dict[str, Server], *, requests: int) -> dict[str, dict]:
    """c=1: each gateway in turn, the order swapped every round; latency (ms) and CPU per request."""
    body = json.dumps(request_body(False)).encode()
    clients = {
        name: httpx.Client(base_url=gateway.base_url, timeout=30, headers={
            "authorization": f"Bearer {gateway.key}", "content-type": "application/json"})
        for name, gateway in gateways.items()
    }
    times: dict[str, list[float]] = {name: [] for name in gateways}
    names = list(gateways)
    for _ in range(100):  # warm both
        for name in names:
            clients[name].post("/chat/completions", content=body).raise_for_status()
    cpu = {name: servers.cpu_seconds(gateway.pids()) for name, gateway in gateways.items()}
    for i in range(requests):
        for name in names if i % 2 else reversed(names):
            start = time.perf_counter()
            clients[name].post("/chat/completions", content=body).raise_for_status()
            times[name].append(1000 * (time.perf_counter() - start))
    results = {}
    for name, gateway in gateways.items():
        ordered = sorted(times[name])
        results[name] = {
            "p50": statistics.median(ordered), "p25": ordered[len(ordered) // 4],
            "p90": ordered[int(len(ordered) * 0.9)],
            "cpu_ms": 1000 * (servers.cpu_seconds(gateway.pids()) - cpu[name]) / len(ordered),
        }
    for client in clients.values():
        client.close()
    return results


def under_load(gateways: dict[str, Server], *, connections: int, duration: int, rounds: int) -> dict[str, dict]:
    """Both driven at once by wrk; CPU per request and req/s of each, per round and in all."""
    totals = {name: {"requests": 0, "cpu_s": 0.0, "rounds": []} for name in gateways}
    for _ in range(rounds):
        cpu = {name: servers.cpu_seconds(gateway.pids()) for name, gateway in gateways.items()}
        running = {
            name: servers.wrk_start(gateway, stream=False, connections=connections, duration=duration, threads=1)
            for name, gateway in gateways.items()
        }
        done = {name: servers.wrk_result(process) for name, process in running.items()}
        for name, gateway in gateways.items():
            spent = servers.cpu_seconds(gateway.pids()) - cpu[name]
            requests = done[name]["requests"]
            totals[name]["requests"] += requests
            totals[name]["cpu_s"] += spent
            totals[name]["rounds"].append({"rps": done[name]["rps"], "cpu_ms": 1000 * spent / max(requests, 1),
                                           "errors": done[name]["errors"]})
    for total in totals.values():
        total["cpu_ms"] = 1000 * total["cpu_s"] / max(total["requests"], 1)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description="This checkout's gateway against another revision's, both up at once.")
    parser.add_argument("--base", required=True, help="the revision to compare with (a commit, a branch, HEAD~1)")
    parser.add_argument("--requests", type=int, default=2000, help="c=1 requests to each gateway (0 skips)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds under load (0 skips)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections to each gateway under load")
    parser.add_argument("--duration", type=int, default=8, help="seconds per round under load")
    parser.add_argument("--workers", type=int, default=1, help="workers per gateway")
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway_bench"),
        help="this checkout's database, dropped and created afresh; the base's gets the suffix _base")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7"))
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting (environment variable) of this checkout's gateway; repeatable")
    parser.add_argument("--base-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the base's gateway: with --base HEAD, compares two settings of one "
                             "revision; repeatable")
    args = parser.parse_args()
    for share, pid, command in servers.busy_elsewhere()[:5]:
        print(f"warning: busy before the run: {share:.0%} of a core, pid {pid} `{command}`", file=sys.stderr, flush=True)
    settings = {"this": dict(s.split("=", 1) for s in args.setting),
                "base": dict(s.split("=", 1) for s in args.base_setting)}

    base_root = Path(tempfile.mkdtemp(prefix="gwbench-base-"))
    subprocess.run(["git", "-C", str(servers.ROOT), "worktree", "add", "--detach", "--force", str(base_root), args.base],
                   check=True, capture_output=True)
    started: list[Server] = []
    try:
        workdir = servers.workdir_create()
        upstream = servers.upstream_start(workdir)
        started.append(upstream)
        gateways = {}
        for name, root, database_url in (("this", servers.ROOT, args.database_url),
                                          ("base", base_root, args.database_url + "_base")):
            gateways[name] = servers.gateway_start(
                upstream, database_url=database_url, redis_url=args.redis_url, workdir=servers.workdir_create(),
                workers=args.workers, root=root, settings=settings[name])
            started.append(gateways[name])
        print(f"this checkout against {args.base} ({base_root}), {args.workers} worker(s) each", flush=True)
        for name, given in settings.items():
            if given:
                print(f"  {name} with " + ", ".join(f"{k}={v}" for k, v in given.items()), flush=True)
        if args.requests:
            lone = lone_requests(gateways, requests=args.requests)
            for name, result in lone.items():
                print(f"  c=1 {name:4}  p50 {result['p50']:.3f} ms  p25 {result['p25']:.3f}  p90 {result['p90']:.3f}"
                      f"  cpu {result['cpu_ms']:.3f} ms/req", flush=True)
        if args.rounds:
            loaded = under_load(gateways, connections=args.connections, duration=args.duration, rounds=args.rounds)
            for name, total in loaded.items():
                per_round = ", ".join(f"{r['cpu_ms']:.3f}" for r in total["rounds"])
                errors = sum(r["errors"] for r in total["rounds"])
                print(f"  c={args.connections} each {name:4}  cpu {total['cpu_ms']:.3f} ms/req ({per_round})"
                      f"  {total['requests']} requests  errors {errors}", flush=True)
    finally:
        for server in reversed(started):
            server.stop()
        subprocess.run(["git", "-C", str(servers.ROOT), "worktree", "remove", "--force", str(base_root)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
