"""Wiring of the router service: inputs, state and outputs are attached to the common service shell here."""

from brixmesh.common.service import Service

from brixmesh.router import kv
from brixmesh.router.discovery.pod_table import PodTable
from brixmesh.router.routing import default_registry
from brixmesh.router.settings import RouterSettings


def build_service(settings: RouterSettings) -> Service:
    service = Service("router", settings)
    registry = default_registry()
    pods = PodTable()
    kv.attach(service, registry, pods)  # extension point of the precise KV-aware routing (brixmesh.router.kv)
    return service
