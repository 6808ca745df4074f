from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    verbose_name = "Batches"

    def ready(self) -> None:
        from batches import tasks  # noqa: F401 - the worker's start-up hook (tasks.resume_on_start)
