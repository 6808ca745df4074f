"""Where the gateway's CPU goes: summarise py-spy's collapsed stacks (`bench/run.py --profile`).

    .venv/bin/python bench/profile_report.py STACKS.txt [...] [--cpu-ms 27.0]

Two views of the same samples:

- by step of the request path: each sample goes to the innermost frame that belongs to a step
  (auth, rate limit, routing, budget reservation, provider call, record write, Django middleware,
  daphne...), so the rows add up to 100 %;
- by library at the leaf (the function that was on the CPU): json, psycopg, Django's ORM, redis,
  httpx, logging...

With `--cpu-ms` (the CPU ms per request measured in the same run) each share is also given in ms
per request.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (step, pattern on "function (file:line)"), innermost match wins; order only breaks ties in one frame.
STEPS = [
    ("auth (API key lookup)", r"api_key_authenticate|accounting/auth"),
    ("guardrails (input check)", r"guard_input|guardrails/"),
    ("rate limit", r"_rate_limit |rate_limit_take|rate_limits_for|accounting/limits|accounting/ratelimit"),
    ("routing (route select)", r"_route |route_select|routing/selection|routing/strategies|routing/experiments"),
    ("cache lookup", r"cache_lookup|caching/"),
    ("budget reservation", r"_budget_reserve|budget_reserve|budgets_for"),
    ("provider call (attempts, adapter, httpx)", r"attempts_run|_attempt |routing/attempts|providers/adapters|providers/client"),
    ("stream relay", r"routing/relay"),
    ("record write (UsageRecord, budget settle)", r"routing/record|usage_record|budget_settle"),
    ("metrics (prometheus_client)", r"gateway_site/metrics|prometheus_client/"),
    ("body parse and validation", r"routing/validation|body_parse|parse_body|routing/schema"),
    ("pipeline (rest)", r"routing/pipeline"),
    ("API view and response (routing/api.py)", r"routing/api\.py"),
    ("Django middleware and handler", r"django/core/handlers|django/middleware|django/contrib/(sessions|auth|messages)/middleware|gateway_site/request_ids|django/utils/deprecation"),
    ("logging", r"logging/__init__|pythonjsonlogger|gateway_site/logs"),
    ("asgiref thread hop", r"asgiref/"),
    ("daphne and twisted (HTTP server)", r"daphne/|twisted/"),
    ("asyncio event loop", r"asyncio/"),
]
LIBRARIES = [
    ("json", r"json/|orjson"),
    ("psycopg (PostgreSQL driver)", r"psycopg"),
    ("Django ORM and SQL compiler", r"django/db/"),
    ("redis client", r"redis/"),
    ("httpx / httpcore / h11", r"httpx/|httpcore/|h11/"),
    ("logging", r"logging/|pythonjsonlogger"),
    ("prometheus_client", r"prometheus_client/"),
    ("Django (other)", r"django/"),
    ("asgiref", r"asgiref/"),
    ("twisted / daphne / autobahn", r"twisted/|daphne/|autobahn/"),
    ("asyncio", r"asyncio/"),
    ("threading / concurrent.futures", r"threading|concurrent/"),
    ("gateway code", r"(routing|accounting|providers|gateway_site|caching|guardrails|feedback)/"),
    ("copy / deepcopy", r"copy\.py"),
    ("decimal / uuid / datetime", r"decimal|uuid|datetime|_strptime"),
]
FRAME = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def samples(paths: list[Path]) -> list[tuple[list[str], int]]:
    out = []
    for path in paths:
        for line in path.read_text().splitlines():
            match = FRAME.match(line)
            if match:
                out.append((match["stack"].split(";"), int(match["count"])))
    return out


def classify(frames: list[str], table) -> str:
    for frame in reversed(frames):
        for name, pattern in table:
            if re.search(pattern, frame):
                return name
    return "other"


def summary(stacks, table, *, leaf_only: bool) -> Counter:
    counts: Counter = Counter()
    for frames, count in stacks:
        counts[classify(frames[-1:] if leaf_only else frames, table)] += count
    return counts


def top_functions(stacks, n: int) -> Counter:
    counts: Counter = Counter()
    for frames, count in stacks:
        for frame in set(frames):
            counts[frame] += count
    return Counter(dict(counts.most_common(n)))


def table(title: str, counts: Counter, total: int, cpu_ms: float | None) -> list[str]:
    head = f"| {title} | share | ms/request |" if cpu_ms else f"| {title} | share |"
    lines = [head, "| --- | ---: | ---: |" if cpu_ms else "| --- | ---: |"]
    for name, count in counts.most_common():
        share = count / total
        lines.append(f"| {name} | {100 * share:.1f} % | {share * cpu_ms:.2f} |" if cpu_ms
                     else f"| {name} | {100 * share:.1f} % |")
    return lines


def render(paths: list[Path], *, cpu_ms: float | None, top: int = 25) -> str:
    stacks = samples(paths)
    total = sum(count for _, count in stacks) or 1
    lines = [f"{total} samples from {len(paths)} worker(s).", ""]
    lines += table("step (innermost)", summary(stacks, STEPS, leaf_only=False), total, cpu_ms) + [""]
    lines += table("library on the CPU (leaf frame)", summary(stacks, LIBRARIES, leaf_only=True), total, cpu_ms)
    lines += ["", f"Top {top} functions by inclusive share:", ""]
    lines += table("function", top_functions(stacks, top), total, cpu_ms)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stacks", nargs="+", type=Path)
    parser.add_argument("--cpu-ms", type=float, default=None, help="CPU ms per request measured in the same run")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(render(args.stacks, cpu_ms=args.cpu_ms, top=args.top))


if __name__ == "__main__":
    main()
