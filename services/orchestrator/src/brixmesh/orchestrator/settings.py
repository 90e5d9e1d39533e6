from brixmesh.common.settings import ServiceSettings


class OrchestratorSettings(ServiceSettings):
    """Settings of the orchestrator service (environment variables ``BRIXMESH_*``)."""
