"""Who gets into the service map page: its real process (`python -m services.web`) on a real
nats-server with the node's users. No token, no page (on loopback too); beyond loopback only
HTTPS, with the node's certificate."""
from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from services.runtime import natsserver
from services.runtime.config import load_config
from tests.support.node import REPO, free_port


class Page:
    def __init__(self, tmp_path, host: str) -> None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"node": "w1", "stateDir": str(tmp_path / "state"),
                                        "nats": {"port": free_port()}, "web": {"host": host, "port": free_port()}}))
        self.config = load_config(path)
        self.log = open(tmp_path / "nats.log", "wb")
        self.nats = natsserver.start(self.config, self.log)
        self.web = None
        try:
            self.web = subprocess.Popen([sys.executable, "-m", "services.web", "--config", str(path)], cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "web.log", "wb"))
            natsserver.wait_listening("127.0.0.1", self.config.web.port, 60, self.web)
        except BaseException:
            self.close()        # a page that never listened leaves no process behind
            raise
        self.token = self.config.web_token_path.read_text().strip()
        self.base = self.config.web.url

    def get(self, path: str, token: str | None = None, context: ssl.SSLContext | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def close(self) -> None:
        for proc in (self.web, self.nats):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def page(request, tmp_path):
    p = Page(tmp_path, request.param)
    try:
        yield p
    finally:
        p.close()


@pytest.mark.parametrize("page", ["127.0.0.1"], indirect=True)
def test_on_loopback_every_request_needs_the_token(page):
    assert page.base.startswith("http://")
    assert page.get("api/map?namespace=x") == 401
    assert page.get("api/map?namespace=x", token="0" * 64) == 401
    assert page.get("api/map?namespace=x", token=page.token) == 200
    assert page.get("login") == 200           # the sign-in form is the only open page


@pytest.mark.parametrize("page", ["0.0.0.0"], indirect=True)
def test_beyond_loopback_the_page_is_https_with_the_nodes_certificate(page):
    ca = ssl.create_default_context(cafile=str(natsserver.tls_dir(page.config) / "ca.pem"))
    assert page.base.startswith("https://")
    assert page.get("api/map?namespace=x", context=ca) == 401
    assert page.get("api/map?namespace=x", token=page.token, context=ca) == 200
    with pytest.raises(urllib.error.URLError):        # a client without the node's CA
        page.get("login", context=ssl.create_default_context())
    plain = page.base.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(plain + "login", timeout=30)
