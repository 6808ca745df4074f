"""The schema and docs pages' views. Apart from `gateway_site.openapi`, which is DRF's schema
class setting and so is imported while drf_spectacular.views itself is being imported."""

from __future__ import annotations

from drf_spectacular.views import SpectacularAPIView
from rest_framework.response import Response


class SchemaView(SpectacularAPIView):
    """`/api/schema/`, generated once per process: it changes only with the code, and generating
    it costs about a third of a second of CPU, which a public route should not spend per request.
    A `?version=` or `?lang=` variant is generated each time, as drf-spectacular does."""

    _schema: dict | None = None

    def _get_schema_response(self, request):
        if self.api_version or request.version or request.GET.get("version") or request.GET.get("lang"):
            return super()._get_schema_response(request)
        if SchemaView._schema is None:
            generator = self.generator_class(urlconf=self.urlconf, patterns=self.patterns)
            SchemaView._schema = generator.get_schema(request=request, public=self.serve_public)
        filename = self._get_filename(request, None)
        return Response(data=SchemaView._schema, headers={"Content-Disposition": f'inline; filename="{filename}"'})
