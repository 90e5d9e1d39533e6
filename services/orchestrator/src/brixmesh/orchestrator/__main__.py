from brixmesh.common.service import service_main

from brixmesh.orchestrator.app import build_service
from brixmesh.orchestrator.settings import OrchestratorSettings


def main() -> None:
    service_main("orchestrator", OrchestratorSettings, build_service)


if __name__ == "__main__":
    main()
