from brixmesh.common.service import service_main

from brixmesh.kv_index.app import build_service
from brixmesh.kv_index.settings import KvIndexSettings


def main() -> None:
    service_main("kv-index", KvIndexSettings, build_service)


if __name__ == "__main__":
    main()
