"""The benchmark's Markdown table, from the data bench/run.py gathered (also kept as JSON)."""

from __future__ import annotations

# Where issue 11 wants the gateway to get to.
TARGETS = [
    ("plain chat c=64: CPU per request", "chat c64", "cpu_ms_per_req", "<=", 2.0, "ms"),
    ("plain chat c=64: requests per second", "chat c64", "rps", ">=", 800.0, "req/s"),
    ("plain chat c=1: added p50", "chat c1", "added_p50", "<=", 2.0, "ms"),
    ("20-chunk stream c=64: CPU per request", "stream c64", "cpu_ms_per_req", "<=", 4.0, "ms"),
    ("20-chunk stream c=1: added to the first chunk (p50)", "first chunk c1", "added_p50", "<=", 2.0, "ms"),
]
SERVERS = ["direct", "gateway", "litellm"]


def _ms(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _cell_rows(data: dict) -> list[str]:
    direct = data["servers"]["direct"]["cells"]
    rows = ["| cell | server | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU ms/req | errors |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cell in direct:
        for name in SERVERS:
            server = data["servers"].get(name)
            if not server:
                continue
            result = server["cells"][cell]
            p50, p99 = _latency(result)
            base50, base99 = _latency(direct[cell])
            if name != "direct":
                result["added_p50"], result["added_p99"] = p50 - base50, p99 - base99
            rps = f"{result['rps']:.0f}" if "rps" in result else "–"
            rows.append(
                f"| {cell} | {name} | {rps} | {_ms(p50)} | {_ms(p99)} | "
                f"{_ms(result.get('added_p50'))} | {_ms(result.get('added_p99'))} | "
                f"{_ms(result.get('cpu_ms_per_req'))} | {_errors(result)} |"
            )
    return rows


def _latency(result: dict) -> tuple[float, float]:
    if "duration_us" in result:  # wrk reports microseconds
        return result["p50"] / 1000, result["p99"] / 1000
    return result["p50"], result["p99"]


def _errors(result: dict) -> str:
    if "duration_us" not in result:
        return str(result["errors"])
    parts = [f"{k} {result[k]}" for k in ("status", "connect", "read", "write", "timeout") if result[k]]
    return ", ".join(parts) if parts else "0"


def _ratio_rows(data: dict) -> list[str]:
    gateway, litellm = data["servers"].get("gateway"), data["servers"].get("litellm")
    if not gateway or not litellm:
        return []
    rows = ["", f"Ratios, same run (LiteLLM {data.get('litellm_version', '?')} ÷ gateway; above 1 means the gateway "
            "is cheaper or faster):", "",
            "| cell | CPU ms/req | added p50 | req/s (gateway ÷ LiteLLM) |", "| --- | ---: | ---: | ---: |"]
    for cell, mine in gateway["cells"].items():
        theirs = litellm["cells"][cell]
        cpu = _div(theirs.get("cpu_ms_per_req"), mine.get("cpu_ms_per_req"))
        added = _div(theirs.get("added_p50"), mine.get("added_p50"))
        rps = _div(mine.get("rps"), theirs.get("rps"))
        rows.append(f"| {cell} | {cpu} | {added} | {rps} |")
    return rows


def _div(a, b) -> str:
    if a is None or b is None or b <= 0:
        return "–"
    return f"{a / b:.2f}×"


def _memory_rows(data: dict) -> list[str]:
    rows = ["", "| server | RSS per worker after the cells (MB) | supervisor / parent (MB) |", "| --- | --- | ---: |"]
    for name in SERVERS:
        server = data["servers"].get(name)
        if server:
            workers = ", ".join(f"{mb:.0f}" for mb in server["memory"]["workers_mb"]) or "– (single process)"
            rows.append(f"| {name} | {workers} | {server['memory']['root_mb']:.0f} |")
    check = data.get("memory_check")
    if check:
        first, second = check["first"], check["second"]
        growth = [b - a for a, b in zip(first["workers_mb"], second["workers_mb"])]
        rows += ["", "Gateway memory check (plain chat, c=16):", "",
                 "| after | requests | errors | RSS per worker (MB) |", "| --- | ---: | ---: | --- |",
                 f"| first run | {first['requests']} | {first['errors']} | "
                 f"{', '.join(f'{mb:.0f}' for mb in first['workers_mb'])} |",
                 f"| second run | {second['requests']} | {second['errors']} | "
                 f"{', '.join(f'{mb:.0f}' for mb in second['workers_mb'])} |",
                 f"| growth | | | {', '.join(f'{mb:+.1f}' for mb in growth)} |"]
    return rows


def _target_rows(data: dict) -> list[str]:
    gateway = data["servers"].get("gateway")
    if not gateway:
        return []
    rows = ["", "Gateway against issue 11's targets:", "", "| target | measured | goal | met |",
            "| --- | ---: | ---: | :---: |"]
    for label, cell, key, op, goal, unit in TARGETS:
        value = gateway["cells"][cell].get(key)
        met = value is not None and (value <= goal if op == "<=" else value >= goal)
        rows.append(f"| {label} | {value:.2f} {unit} | {op} {goal:g} {unit} | {'yes' if met else 'no'} |")
    check = data.get("memory_check")
    if check:
        worst = max(check["second"]["workers_mb"] + check["first"]["workers_mb"])
        growth = max(b - a for a, b in zip(check["first"]["workers_mb"], check["second"]["workers_mb"]))
        rows.append(f"| RSS per worker after 10,000 requests | {worst:.0f} MB | < 150 MB | {'yes' if worst < 150 else 'no'} |")
        rows.append(f"| RSS growth over a second run | {growth:+.1f} MB | none (< 5 MB) | {'yes' if growth < 5 else 'no'} |")
    usage = data.get("usage_records")
    if usage:
        rows.append(f"| one UsageRecord per answered request | {usage['total']} records for {usage['answered']} answered "
                    f"({', '.join(f'{k} {v}' for k, v in sorted(usage['by_status'].items()))}) | every one | "
                    f"{'yes' if usage['ok'] else 'no'} |")
    errors = sum(_error_count(c) for c in gateway["cells"].values())
    rows.append(f"| errors in any gateway cell | {errors} | 0 | {'yes' if not errors else 'no'} |")
    return rows


def _error_count(result: dict) -> int:
    return result.get("errors", 0)


def render(data: dict) -> str:
    lines = [f"# Benchmark {data['started']}", "",
             f"{data['nproc']} CPUs; each cell {data['duration']:g} s; {data['workers']} workers per server "
             f"(gateway on {data.get('gateway_server', 'daphne')}"
             + "".join(f", {name}={value}" for name, value in (data.get("gateway_settings") or {}).items())
             + "); "
             "wrk on the same machine. Load before: `" + data["uptime_before"] + "`; after: `"
             + data.get("uptime_after", "?") + "`.", "",
             "CPU ms/req is the user+system time of every process of that server (supervisor and workers; "
             "for direct, the fake upstream) during the cell, divided by the requests wrk completed. "
             "\"first chunk c1\" is the time to the first SSE event, measured by an httpx client.", ""]
    lines += _cell_rows(data)
    lines += _ratio_rows(data)
    lines += _memory_rows(data)
    lines += _target_rows(data)
    profile = data.get("profile")
    if profile:
        cell = profile["cell"]
        lines += ["", f"Profiled run (py-spy on each worker, c={profile.get('connections', 64)} plain chat): {cell['rps']:.0f} req/s, "
                  f"{cell['cpu_ms_per_req']:.2f} CPU ms/req; stacks in {', '.join(profile['stacks'])} "
                  "(summarise with `bench/profile_report.py`)."]
    for note in data.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"
