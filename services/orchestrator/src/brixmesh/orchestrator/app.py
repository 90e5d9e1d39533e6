"""Wiring of the orchestrator service: inputs, state and outputs are attached to the common service shell here."""

from brixmesh.common.service import Service

from brixmesh.orchestrator.settings import OrchestratorSettings


def build_service(settings: OrchestratorSettings) -> Service:
    return Service("orchestrator", settings)
