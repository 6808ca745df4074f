"""Provider keys re-encrypted under a new Fernet key while a real gateway keeps serving.

The procedure of docs/reliability.md ("Keys"), run against real processes: the fake provider only
accepts the real provider key (`--api-key`), so a key that does not decrypt, or decrypts to
garbage, fails the requests. Traffic runs the whole time and every request must succeed:

1. gateway 1 runs with `GATEWAY_ENCRYPTION_KEY=old`;
2. gateway 2 starts with `new,old`; traffic moves to it; gateway 1 stops (a rolling restart);
3. `manage.py rotate_provider_keys` re-encrypts every key under `new` (the database column no
   longer opens with `old`), while gateway 2 keeps re-reading its keys (config cache of 1 s);
4. gateway 3 starts with `new` alone; traffic moves to it; gateway 2 stops. `old` is gone.

A replica left behind with `old` alone after step 3 is the mistake the order prevents: it must
answer with a clear error, not a 500, and say in its log which key it cannot read.
"""

from __future__ import annotations

import sys
import threading
import time

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken

from tests.conftest import free_port, start_process, stop_process
from tests.e2e.conftest import database_create, database_drop, deployment_env, gateway_start, manage

pytestmark = pytest.mark.e2e

PROVIDER_SECRET = "rotation-provider-secret-5e1b77"
CONFIG = """
providers:
  - name: fake
    type: openai
    api_base: http://127.0.0.1:{fake_port}/v1
    api_key: {secret}
    models:
      - {{alias: gpt-4o-mini, input_price_per_million: 0.15, output_price_per_million: 0.6}}
tenants:
  - slug: acme
"""


class Traffic(threading.Thread):
    """Chat requests one after another against whichever gateway is current."""

    def __init__(self, api_key: str):
        super().__init__(daemon=True)
        self.url = ""
        self.api_key = api_key
        self.statuses: list[tuple[str, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopping.is_set():
                url = self.url
                try:
                    status = client.post(
                        f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {self.api_key}"},
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                    ).status_code
                except httpx.TransportError:
                    status = 0
                self.statuses.append((url, status))

    def served_by(self, url: str) -> int:
        return sum(1 for where, _ in self.statuses if where == url)

    def wait_for(self, url: str, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.served_by(url)
        while self.served_by(url) < start + count:
            assert time.monotonic() < deadline, f"{url} served too few requests"
            time.sleep(0.05)


def _stored_ciphertexts(env: dict) -> list[str]:
    import psycopg

    with psycopg.connect(env["DATABASE_URL"].replace("postgres://", "postgresql://", 1)) as conn:
        return [row[0] for row in conn.execute("SELECT encrypted_secret FROM providers_providerkey")]


def test_rotation_keeps_a_running_gateway_serving(tmp_path):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    database_url, name = database_create()
    base = deployment_env(database_url, name, LOG_LEVEL="INFO")
    env_old = {**base, "GATEWAY_ENCRYPTION_KEY": old}
    env_both = {**base, "GATEWAY_ENCRYPTION_KEY": f"{new},{old}"}
    env_new = {**base, "GATEWAY_ENCRYPTION_KEY": new}
    processes = []
    traffic = None
    try:
        fake_port = free_port()  # the fake upstream accepts only the real provider key
        fake = start_process([sys.executable, "manage.py", "fake_provider", "--port", str(fake_port),
                              "--api-key", PROVIDER_SECRET], ready="listening", env=env_old)
        processes.append(fake)
        manage(env_old, "migrate", "--noinput")
        config = tmp_path / "gateway.yaml"
        config.write_text(CONFIG.format(fake_port=fake_port, secret=PROVIDER_SECRET))
        manage(env_old, "import_config", str(config))
        api_key = manage(env_old, "create_api_key", "acme").strip().splitlines()[-1]
        [stored] = _stored_ciphertexts(env_old)
        assert PROVIDER_SECRET not in stored
        assert Fernet(old).decrypt(stored.encode()).decode() == PROVIDER_SECRET

        gateway_1, url_1 = gateway_start(env_old, tmp_path / "g1.log")
        processes.append(gateway_1)
        traffic = Traffic(api_key)
        traffic.url = url_1
        traffic.start()
        traffic.wait_for(url_1, 5)

        gateway_2, url_2 = gateway_start(env_both, tmp_path / "g2.log")
        processes.append(gateway_2)
        traffic.url = url_2
        traffic.wait_for(url_2, 3)
        stop_process(gateway_1)

        output = manage(env_both, "rotate_provider_keys")
        assert "Re-encrypted 1 provider key(s)." in output and PROVIDER_SECRET not in output
        [rotated] = _stored_ciphertexts(env_both)
        assert Fernet(new).decrypt(rotated.encode()).decode() == PROVIDER_SECRET
        with pytest.raises(InvalidToken):
            Fernet(old).decrypt(rotated.encode())
        traffic.wait_for(url_2, 10)  # spans more than one config-cache interval

        gateway_3, url_3 = gateway_start(env_new, tmp_path / "g3.log")
        processes.append(gateway_3)
        traffic.url = url_3
        traffic.wait_for(url_3, 5)
        stop_process(gateway_2)
        traffic.wait_for(url_3, 5)
        traffic.stopping.set()
        traffic.join(timeout=15)

        failed = [entry for entry in traffic.statuses if entry[1] != 200]
        assert not failed, f"{len(failed)} of {len(traffic.statuses)} requests failed during rotation: {failed[:5]}"
        assert len(traffic.statuses) >= 28
        print(f"rotation: {len(traffic.statuses)} requests, {len(traffic.statuses) - len(failed)} answered 200")

        # A replica left behind with only the old key: a clear error and a log line, never a 500.
        straggler, url_old = gateway_start(env_old, tmp_path / "straggler.log")
        processes.append(straggler)
        answer = httpx.post(f"{url_old}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                            timeout=10)
        assert 400 <= answer.status_code < 500 or answer.status_code in (502, 503), answer.text
        assert answer.json()["error"]["message"]
        print(f"straggler: {answer.status_code} {answer.json()['error']}")
        log = (tmp_path / "straggler.log").read_text()
        assert "cannot be decrypted" in log and rotated not in log and PROVIDER_SECRET not in log
        for path in ("g1.log", "g2.log", "g3.log"):
            assert PROVIDER_SECRET not in (tmp_path / path).read_text()
    finally:
        if traffic is not None:
            traffic.stopping.set()
        for process in processes:
            stop_process(process)
        database_drop(name)
