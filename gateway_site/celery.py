"""The Celery app. Tasks live in each app's `tasks.py`; the beat schedule is declared in settings."""

import os
import warnings

from celery import Celery, signals
from celery.exceptions import SecurityWarning

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

app = Celery("gateway")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.celeryd_init.connect
def worker_root_check(*, conf, **kwargs) -> None:
    """Celery's warning for a worker running as root, answered for the embedded broker.

    A worker runs what its broker delivers: as root, a message that may carry code (pickle) is
    root's code, so Celery refuses pickle under root and warns about root otherwise. The embedded
    broker of `make run` (`filesystem://`) is a folder in `GATEWAY_VAR_DIR`, created 0700, so no
    other user can deliver a message, and the worker accepts JSON only, so no message carries
    code: the warning guards against nothing there, and a demo started as root (a container, a
    fresh VM) keeps a clean terminal. On any other broker (Redis, production) it stands: run those
    workers as their own user (deploy/systemd/). `celeryd_init` is sent just before the check.
    """
    if conf.broker_url.startswith("filesystem://") and set(conf.accept_content) <= {"json", "application/json"}:
        warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges",
                                category=SecurityWarning)
