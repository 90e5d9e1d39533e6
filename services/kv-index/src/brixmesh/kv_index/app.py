"""Wiring of the kv-index service: inputs, state and outputs are attached to the common service shell here."""

from brixmesh.common.service import Service

from brixmesh.kv_index.settings import KvIndexSettings


def build_service(settings: KvIndexSettings) -> Service:
    return Service("kv-index", settings)
