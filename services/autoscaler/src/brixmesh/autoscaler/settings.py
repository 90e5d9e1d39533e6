from brixmesh.common.settings import ServiceSettings


class AutoscalerSettings(ServiceSettings):
    """Settings of the autoscaler service (environment variables ``BRIXMESH_*``)."""
