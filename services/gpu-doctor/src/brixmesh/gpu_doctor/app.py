"""Wiring of the gpu-doctor service: inputs, state and outputs are attached to the common service shell here."""

from brixmesh.common.service import Service

from brixmesh.gpu_doctor.settings import GpuDoctorSettings


def build_service(settings: GpuDoctorSettings) -> Service:
    return Service("gpu-doctor", settings)
