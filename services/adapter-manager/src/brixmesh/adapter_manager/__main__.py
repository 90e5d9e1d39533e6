from brixmesh.common.service import service_main

from brixmesh.adapter_manager.app import build_service
from brixmesh.adapter_manager.settings import AdapterManagerSettings


def main() -> None:
    service_main("adapter-manager", AdapterManagerSettings, build_service)


if __name__ == "__main__":
    main()
