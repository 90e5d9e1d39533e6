from brixmesh.common.service import service_main

from brixmesh.kv_index.tier.app import build_service
from brixmesh.kv_index.tier.settings import KvTierSettings


def main() -> None:
    service_main("kv-tier", KvTierSettings, build_service)


if __name__ == "__main__":
    main()
