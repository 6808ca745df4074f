"""The kernel: what every app shares (errors, event-loop helpers, database and Redis access,
HTTP helpers, metrics, logs, configuration caches). It imports no app; `tests/test_layers.py`
checks it."""
