from brixmesh.common.service import service_main

from brixmesh.gpu_doctor.app import build_service
from brixmesh.gpu_doctor.settings import GpuDoctorSettings


def main() -> None:
    service_main("gpu-doctor", GpuDoctorSettings, build_service)


if __name__ == "__main__":
    main()
