"""Wiring of the autoscaler service: inputs, state and outputs are attached to the common service shell here."""

from brixmesh.common.service import Service

from brixmesh.autoscaler.settings import AutoscalerSettings


def build_service(settings: AutoscalerSettings) -> Service:
    return Service("autoscaler", settings)
