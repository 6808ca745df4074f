"""The three servers the benchmark measures, started as their users start them, and their processes.

- `upstream_start`: bench/upstream.py, the fast fake OpenAI upstream ("direct" column).
- `gateway_start`: this gateway as deployed (docs/deployment.md): `GATEWAY_ENV=production`,
  PostgreSQL and Redis, `manage.py migrate`, `import_config` (provider, tenant, budget, rate limit),
  `create_api_key`, then `manage.py serve --workers 2`.
- `litellm_start`: the LiteLLM proxy from its own virtualenv (bench/.litellm-venv), configured to
  the same upstream, `--num_workers 2`, a master key, no database (see docs/performance.md).

CPU and memory come from /proc: a server is its root process and every descendant. The load is
wrk with bench/chat.lua (`wrk_start`, `wrk_result`).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LITELLM_VENV = BENCH / ".litellm-venv"
MODEL = "bench-model"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    base_url: str  # ends with /v1
    process: subprocess.Popen
    key: str = ""
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def workers(self) -> list[int]:
        """The worker processes: the root's descendants that serve requests."""
        return [pid for pid in self.pids() if pid != self.process.pid and _serves(pid)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in self.pids():
                    _kill(pid)
                self.process.wait()


# --- /proc -----------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from the 3rd (state) on; comm may hold spaces


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def busy_elsewhere(seconds: float = 1.0, *, at_least: float = 0.02) -> list[tuple[float, int, str]]:
    """The processes that used at least `at_least` of a core during `seconds` before a run, as
    (share of a core, pid, command line), busiest first: a benchmark beside them measures them too
    (a run once met a dozen servers a failed test run had left behind)."""
    mine = set(process_tree(os.getpid()))
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) not in mine]
    before = {pid: cpu_seconds([pid]) for pid in pids}
    time.sleep(seconds)
    busy = []
    for pid, used in before.items():
        share = (cpu_seconds([pid]) - used) / seconds
        if share >= at_least:
            busy.append((share, pid, _cmdline(pid)[:120] or f"[{pid}]"))
    return sorted(busy, reverse=True)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _serves(pid: int) -> bool:
    # multiprocessing's helper processes (resource tracker, fork server) serve nothing.
    cmd = _cmdline(pid)
    return bool(cmd) and "resource_tracker" not in cmd and "forkserver" not in cmd


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


# --- starting --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, *, timeout: float, log_path: Path | None = None,
              headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode}); see {log_path}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s; see {log_path}")


def _popen(cmd: list[str], *, env: dict, log_path: Path, root: Path = ROOT) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def upstream_start(workdir: Path) -> Server:
    port = free_port()
    log_path = workdir / "upstream.log"
    process = _popen([sys.executable, str(BENCH / "upstream.py"), "--port", str(port)], env=dict(os.environ),
                     log_path=log_path)
    wait_http(f"http://127.0.0.1:{port}/v1/models", process, timeout=20, log_path=log_path)
    return Server("direct", f"http://127.0.0.1:{port}/v1", process, key="bench-upstream-key", log_path=log_path)


GATEWAY_CONFIG = """\
providers:
  - name: bench-upstream
    type: openai
    api_base: http://127.0.0.1:{port}/v1
    api_key: bench-upstream-key
    models:
      - alias: {model}
        upstream: {model}
        mode: chat
        input_price_per_million: 0.15
        output_price_per_million: 0.60
        context_window: 128000
        max_output_tokens: 16384
tenants:
  - slug: bench
    name: Benchmark
    budget: {{amount_usd: 1000000, period: monthly, hard: true}}
    rate_limit: {{rpm: 1000000, tpm: 1000000000}}
"""


def database_recreate(database_url: str) -> None:
    import psycopg  # the gateway's own PostgreSQL driver

    name = urlparse(database_url).path.lstrip("/")
    admin = urlparse(database_url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def gateway_env(database_url: str, redis_url: str, workdir: Path) -> dict:
    from cryptography.fernet import Fernet

    prefix = f"gwbench:{workdir.name}"
    metrics = workdir / "prometheus"
    metrics.mkdir(exist_ok=True)
    return {
        **os.environ,
        "GATEWAY_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "GATEWAY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # TLS would end at a reverse proxy in front; the benchmark talks plain HTTP to the workers.
        "SECURE_SSL_REDIRECT": "false",
        "GATEWAY_REDIS_PREFIX": prefix,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "GATEWAY_STATIC_ROOT": str(workdir / "static"),
    }


def _manage(env: dict, *args: str, root: Path = ROOT) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def gateway_start(upstream: Server, *, database_url: str, redis_url: str, workdir: Path, workers: int,
                  root: Path = ROOT, settings: dict | None = None) -> Server:
    """The gateway of the checkout at `root` (this one by default; `bench/ab.py` starts another),
    with `settings` (environment variables) over the production ones."""
    database_recreate(database_url)
    env = {**gateway_env(database_url, redis_url, workdir), **(settings or {})}
    _manage(env, "migrate", "--noinput", root=root)
    config = workdir / "gateway.yaml"
    config.write_text(GATEWAY_CONFIG.format(port=urlparse(upstream.base_url).port, model=MODEL))
    _manage(env, "import_config", str(config), root=root)
    key = _manage(env, "create_api_key", "bench", "--name", "bench", root=root).strip().splitlines()[-1]
    port = free_port()
    log_path = workdir / "gateway.log"
    process = _popen(
        [sys.executable, "manage.py", "serve", "--workers", str(workers), "--bind", f"127.0.0.1:{port}"],
        env=env, log_path=log_path, root=root,
    )
    server = Server("gateway", f"http://127.0.0.1:{port}/v1", process, key=key, log_path=log_path,
                    extra={"env": env, "database_url": database_url, "server": "uvicorn"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, timeout=90, log_path=log_path)
        _wait_workers(server, workers)
    except RuntimeError:
        server.stop()
        raise
    return server


def _wait_workers(server: Server, count: int, timeout: float = 60) -> None:
    """Each worker answers once it has loaded Django: until then the kernel may hand it a connection."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline and len(server.workers()) < count:
            time.sleep(0.2)
        for _ in range(8 * count):  # fresh connections spread over the workers
            client.get(server.base_url.removesuffix("/v1") + "/health", headers={"connection": "close"})


LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{port}/v1
      api_key: bench-upstream-key
litellm_settings:
  set_verbose: false
  request_timeout: 600
general_settings:
  master_key: {key}
"""


def litellm_available() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


def litellm_version() -> str:
    done = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                           "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True)
    return done.stdout.strip()


def litellm_start(upstream: Server, *, workdir: Path, workers: int) -> Server:
    key = "sk-bench-" + secrets.token_hex(8)
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(model=MODEL, port=urlparse(upstream.base_url).port, key=key))
    port = free_port()
    log_path = workdir / "litellm.log"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "DISABLE_SCHEMA_UPDATE": "true", "LITELLM_TELEMETRY": "False"}
    env.pop("DATABASE_URL", None)
    process = _popen(
        [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", str(workers),
         # uvicorn (>= 0.37) kills a worker that has not answered its supervisor within 5 s; LiteLLM
         # takes longer than that to import on a busy machine, and its workers would die forever.
         "--timeout_worker_healthcheck", "120"],
        env=env, log_path=log_path,
    )
    server = Server("litellm", f"http://127.0.0.1:{port}/v1", process, key=key, log_path=log_path,
                    extra={"version": litellm_version()})
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", process, timeout=180, log_path=log_path)
    except RuntimeError:
        server.stop()
        raise
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(server.workers()) < workers:
        time.sleep(0.2)
    return server


def workdir_create() -> Path:
    return Path(tempfile.mkdtemp(prefix="gwbench-"))


def wrk_start(server: Server, *, stream: bool, connections: int, duration: float, threads: int) -> subprocess.Popen:
    """wrk driving `server` with bench/chat.lua; `wrk_result` waits for it and reads its result."""
    env = {**os.environ, "BENCH_KEY": server.key, "BENCH_MODEL": MODEL, "BENCH_STREAM": "1" if stream else "0"}
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--timeout", "30s",
           "--latency", "-s", str(BENCH / "chat.lua"), server.chat_url]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(process: subprocess.Popen) -> dict:
    """chat.lua's result line, with req/s, errors of every kind together, and answered requests."""
    out, err = process.communicate()
    for line in out.splitlines():
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line.removeprefix("BENCH_RESULT "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
            result["answered"] = result["requests"] - result["status"]
            return result
    raise RuntimeError(f"wrk gave no result:\n{out}\n{err}")
