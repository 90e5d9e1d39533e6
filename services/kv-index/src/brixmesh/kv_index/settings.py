from brixmesh.common.settings import ServiceSettings


class KvIndexSettings(ServiceSettings):
    """Settings of the kv-index service (environment variables ``BRIXMESH_*``)."""
