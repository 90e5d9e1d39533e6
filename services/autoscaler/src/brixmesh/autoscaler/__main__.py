from brixmesh.autoscaler.app import build_service
from brixmesh.autoscaler.settings import AutoscalerSettings
from brixmesh.common.service import service_main


def main() -> None:
    service_main("autoscaler", AutoscalerSettings, build_service)


if __name__ == "__main__":
    main()
