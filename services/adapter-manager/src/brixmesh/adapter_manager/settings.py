from brixmesh.common.settings import ServiceSettings


class AdapterManagerSettings(ServiceSettings):
    """Settings of the adapter-manager service (environment variables ``BRIXMESH_*``)."""
