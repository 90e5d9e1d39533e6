"""Wiring of the router service: inputs, state and outputs are attached to the common service shell here."""

from brixmesh.common.service import Service

from brixmesh.router.settings import RouterSettings


def build_service(settings: RouterSettings) -> Service:
    return Service("router", settings)
