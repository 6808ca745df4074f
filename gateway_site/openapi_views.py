"""The schema and docs pages' views. Apart from `kernel.openapi`, which is DRF's schema
class setting and so is imported while drf_spectacular.views itself is being imported."""

from __future__ import annotations

from drf_spectacular.settings import spectacular_settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.response import Response


class SchemaView(SpectacularAPIView):
    """`/api/schema/`, generated once per process: it changes only with the code, and generating
    it costs about a third of a second of CPU, which a public route should not spend per request.
    A `?version=` or `?lang=` variant is generated each time, as drf-spectacular does."""

    generated_schema: dict | None = None  # the default variant, once generated

    @extend_schema(exclude=True)  # the schema does not describe itself (SERVE_INCLUDE_SCHEMA is off)
    def get(self, request, *args, **kwargs):
        if self.api_version or request.version or request.GET.get("version") or request.GET.get("lang"):
            return super().get(request, *args, **kwargs)
        if SchemaView.generated_schema is None:
            response = super().get(request, *args, **kwargs)
            SchemaView.generated_schema = response.data
            return response
        # The name drf-spectacular gives it: the title, and the negotiated format (yaml or json).
        filename = f"{spectacular_settings.TITLE or 'schema'}.{request.accepted_renderer.format}"
        return Response(data=SchemaView.generated_schema, headers={"Content-Disposition": f'inline; filename="{filename}"'})
