"""`capillary web [--token]`: the service map page's address, with the token that opens it.

The token is derived from the admin context's password (natsserver.web_token): whoever may
run the CLI may open the page, and nobody else.
"""
from __future__ import annotations

from services.cli.client import context_path
from services.runtime.bus import Credentials
from services.runtime.config import NodeConfig
from services.runtime.natsserver import web_token


def add_parser(sub) -> None:
    p = sub.add_parser("web", help="the address of the service map page, with its access token")
    p.add_argument("--token", action="store_true", help="print only the token")


def show(config: NodeConfig, token_only: bool) -> int:
    token = web_token(Credentials.load(context_path(config)).password, config.node)
    if token_only:
        print(token)
    elif not config.web.enabled:
        print(f"the page is off on this node (web.enabled: false); its token: {token}")
    else:
        print(f"{config.web.url}?token={token}")
    return 0
