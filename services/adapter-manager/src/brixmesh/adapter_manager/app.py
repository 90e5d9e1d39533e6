"""Wiring of the adapter-manager service: inputs, state and outputs are attached to the common service shell here."""

from brixmesh.common.service import Service

from brixmesh.adapter_manager.settings import AdapterManagerSettings


def build_service(settings: AdapterManagerSettings) -> Service:
    return Service("adapter-manager", settings)
