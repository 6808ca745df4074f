"""`GATEWAY_VAR_DIR` is the owner's alone: the folder 0700, the SQLite file (sessions, kept prompts)
and the generated secrets 0600, when created and, for a var/ of an older version, at every start.
Each case starts a real process in the embedded mode (no DATABASE_URL, no secrets in the
environment), with the common umask 022 under which files used to come out world-readable."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from tests.conftest import ROOT

OPEN_DATABASE = (
    "import os; os.umask(0o022); os.environ['DJANGO_SETTINGS_MODULE'] = 'gateway_site.settings'; "
    "import django; django.setup(); from django.db import connection; "
    "connection.cursor().execute('CREATE TABLE IF NOT EXISTS probe (x int)')"
)


def _embedded_start(var: Path) -> None:
    env = {name: value for name, value in os.environ.items()
           if name not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY",
                           "GATEWAY_ENCRYPTION_KEY", "GATEWAY_ENV")}
    env["GATEWAY_VAR_DIR"] = str(var)
    subprocess.run([sys.executable, "-c", OPEN_DATABASE], cwd=ROOT, env=env, check=True, timeout=60)


def _modes(var: Path) -> dict[str, str]:
    paths = {"var": var, **{name: var / name for name in ("gateway.sqlite3", "secret_key", "encryption_key")}}
    return {name: oct(stat.S_IMODE(path.stat().st_mode)) for name, path in paths.items()}


PRIVATE = {"var": "0o700", "gateway.sqlite3": "0o600", "secret_key": "0o600", "encryption_key": "0o600"}


def test_a_new_var_dir_is_created_private(tmp_path):
    var = tmp_path / "var"
    _embedded_start(var)
    assert _modes(var) == PRIVATE
    assert (var / "secret_key").read_text() and (var / "encryption_key").read_text()


def test_an_existing_world_readable_var_dir_is_tightened_on_start(tmp_path):
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    (var / "secret_key").write_text("an-older-secret-key-" * 3)
    (var / "encryption_key").write_text(Fernet.generate_key().decode())
    (var / "gateway.sqlite3").touch()
    for name in ("secret_key", "encryption_key", "gateway.sqlite3"):
        (var / name).chmod(0o644)
    _embedded_start(var)
    assert _modes(var) == PRIVATE
    assert (var / "secret_key").read_text() == "an-older-secret-key-" * 3  # kept, only tightened
