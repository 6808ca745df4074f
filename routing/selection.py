"""Route selection: which deployments may serve a request, in the order to try them."""

from accounting.auth import ApiKeyContext, model_authorize
from providers.selectors import Deployment, catalog_get


async def route_select(*, auth: ApiKeyContext, model: str, mode: str) -> list[Deployment]:
    """Resolve the requested model for this key; permission is checked on the model's alias."""
    catalog = await catalog_get()
    deployments = catalog.resolve(model, mode=mode)
    model_authorize(context=auth, alias=deployments[0].alias)
    return deployments


async def models_visible(*, auth: ApiKeyContext) -> list[Deployment]:
    """One deployment per alias this key may use, for `GET /v1/models`."""
    catalog = await catalog_get()
    seen: dict[str, Deployment] = {}
    for deployment in catalog.models():
        if auth.allows(deployment.alias):
            seen.setdefault(deployment.alias, deployment)
    return list(seen.values())
