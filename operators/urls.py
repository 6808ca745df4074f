"""Routes of the operator API under /v1/ (included before the tenant API's catch-all 404)."""

from rest_framework.routers import SimpleRouter

from accounting.api import BudgetViewSet, TenantApiKeyViewSet, TenantViewSet
from providers.api import ProviderKeyViewSet, ProviderModelViewSet
from routing.operator_api import ProviderHealthViewSet, RouteGroupViewSet, RoutingRuleViewSet

router = SimpleRouter(trailing_slash=False)
router.register("providers", ProviderHealthViewSet, basename="operator-provider")
router.register("provider-models", ProviderModelViewSet, basename="operator-provider-model")
router.register("provider-keys", ProviderKeyViewSet, basename="operator-provider-key")
router.register("tenants", TenantViewSet, basename="operator-tenant")
router.register("tenant-keys", TenantApiKeyViewSet, basename="operator-tenant-key")
router.register("budgets", BudgetViewSet, basename="operator-budget")
router.register("routing-rules", RoutingRuleViewSet, basename="operator-routing-rule")
router.register("route-groups", RouteGroupViewSet, basename="operator-route-group")

urlpatterns = router.urls
