from brixmesh.common.service import service_main

from brixmesh.router.app import build_service
from brixmesh.router.settings import RouterSettings


def main() -> None:
    service_main("router", RouterSettings, build_service)


if __name__ == "__main__":
    main()
