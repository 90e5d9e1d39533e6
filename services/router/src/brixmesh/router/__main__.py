"""The OpenAI-compatible gateway: discovers pods, keeps a global prefix index, routes each request."""

from brixmesh.common.service import run
from brixmesh.common.settings import load_or_exit

from brixmesh.router.app import build_router
from brixmesh.router.settings import RouterSettings


def main() -> None:
    router = build_router(load_or_exit(RouterSettings, "brixmesh-router"))
    run(router.service, router.asgi)


if __name__ == "__main__":
    main()
