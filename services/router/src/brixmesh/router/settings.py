from brixmesh.common.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """Settings of the router service (environment variables ``BRIXMESH_*``)."""

    port: int = 8000
