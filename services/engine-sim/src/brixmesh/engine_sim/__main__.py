"""``brixmesh-engine-sim``: a drop-in for ``vllm serve`` in tests and benchmarks."""

from __future__ import annotations

import asyncio
import logging
import sys

from brixmesh.engine_sim.cli import CliError, build_parser, configs_from_args
from brixmesh.engine_sim.server import serve


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configs = configs_from_args(args)
    except CliError as exc:
        print(f"brixmesh-engine-sim: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(serve(configs, args.log_level))


if __name__ == "__main__":
    sys.exit(main())
