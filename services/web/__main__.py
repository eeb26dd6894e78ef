import argparse
import asyncio

from services.runtime.config import load_config
from services.runtime.logging import setup_logging
from services.web.service import WebService


def main() -> None:
    parser = argparse.ArgumentParser(prog="capillary-web")
    parser.add_argument("--config", help="node config file (default: $CAPILLARY_CONFIG)")
    args = parser.parse_args()
    setup_logging("web")
    asyncio.run(WebService(load_config(args.config)).run())


if __name__ == "__main__":
    main()
