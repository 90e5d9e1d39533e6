from brixmesh.common.settings import ServiceSettings


class GpuDoctorSettings(ServiceSettings):
    """Settings of the gpu-doctor service (environment variables ``BRIXMESH_*``)."""
