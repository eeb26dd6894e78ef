"""The service map page in a real browser (Debian's chromium, driven by Playwright) on a real
node: pods and a policy, allowed and denied traffic, and what the page draws of them: the
cards, the arrows' colours, a flow row arriving live, a filter, a flow's JSON and policy,
and a walk. CAPILLARY_SCREENSHOT=FILE saves the page as the test leaves it (the README's)."""
from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request

import pytest
import yaml

from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import Servers, ping, probe
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DB, CACHE, SHUT = 5432, 6379, 7000
PATIENCE = 60_000               # ms: a loaded 2-core machine
GREEN, RED = "rgb(46, 158, 68)", "rgb(214, 58, 58)"
DB_FROM_WEB = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "db-from-web", "namespace": "shop"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "db"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                          "toPorts": [{"ports": [{"port": str(DB), "protocol": "TCP"}]}]}]},
}


@pytest.fixture(scope="module")
def shop(node):
    """shop/web, shop/batch and shop/db (serving DB, CACHE and SHUT). batch reaches db before
    the policy and is dropped after it (a link with both verdicts); web reaches db on DB and
    is dropped on CACHE; the host pings web."""
    node.apply(docs(namespace_doc("shop"), *(pod_doc("shop", n, {"app": n}) for n in ("web", "batch", "db"))))
    servers = Servers()
    try:
        servers.start(node.netns("shop/db"), DB, CACHE, SHUT)
        db = node.pod_ip("shop/db")
        assert probe(node.netns("shop/batch"), "tcp", db, DB)
        node.apply(yaml.safe_dump(DB_FROM_WEB))
        wait_for(lambda: not probe(node.netns("shop/batch"), "tcp", db, DB), "the policy drops batch -> db")
        assert probe(node.netns("shop/web"), "tcp", db, DB)
        assert not probe(node.netns("shop/web"), "tcp", db, CACHE)
        assert ping(None, node.pod_ip("shop/web"))
        yield node
    finally:
        servers.close()
        node.cli("delete", "cnp", "db-from-web", "-n", "shop", check=False)
        node.cli("delete", "namespace", "shop", check=False)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(shop, browser):
    url = shop.cli("web").stdout.strip()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(PATIENCE)
    page.goto(url.replace("/?", "/?namespace=shop&"))
    try:
        yield page
    finally:
        if os.environ.get("CAPILLARY_SCREENSHOT"):
            page.screenshot(path=os.environ["CAPILLARY_SCREENSHOT"])
        context.close()


def link(page, source: str, destination: str, port: int):
    return page.locator(f'.link[data-source="{source}"][data-destination="{destination}"][data-port="{port}"]')


def stroke(page, source: str, destination: str, port: int) -> tuple[str, str]:
    line = link(page, source, destination, port).locator("path.line")
    line.wait_for(state="attached")
    return tuple(line.evaluate("p => [getComputedStyle(p).stroke, getComputedStyle(p).strokeDasharray]"))


def test_the_page_needs_the_token(shop):
    base = f"http://127.0.0.1:{shop.web_port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/map?namespace=shop", timeout=10)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(f"{base}/?token=not-the-token", timeout=10)
    assert wrong.value.code == 401


def test_cards_and_arrows(page):
    for card in ("shop/web", "shop/batch", "shop/db", "world", "host"):
        page.locator(f'[data-card="{card}"]').wait_for()
    page.wait_for_function("""() => {
        const ports = document.querySelector('[data-card="shop/db"] text.ports').textContent;
        return ports.includes('5432/TCP') && ports.includes('6379/TCP');
    }""")
    assert stroke(page, "shop/web", "shop/db", DB) == (GREEN, "none")
    assert stroke(page, "shop/web", "shop/db", CACHE) == (RED, "none")
    assert stroke(page, "host", "shop/web", 0) == (GREEN, "none")
    both = link(page, "shop/batch", "shop/db", DB)
    assert both.get_attribute("data-verdict") == "both"
    colour, dashes = stroke(page, "shop/batch", "shop/db", DB)
    assert colour == RED and dashes != "none"


def test_a_flow_arrives_live_and_the_filter_keeps_to_it(page, shop):
    rows = page.locator("#flows tbody tr")
    rows.first.wait_for()
    assert probe(shop.netns("shop/web"), "tcp", shop.pod_ip("shop/db"), SHUT) is False
    page.locator("#flows tbody tr", has_text=f"{SHUT}/TCP").first.wait_for()   # no reload
    page.fill("#f-port", str(SHUT))
    page.select_option("#f-verdict", "DROPPED")
    page.wait_for_function(f"""() => {{
        const rows = [...document.querySelectorAll('#flows tbody tr')];
        return rows.length > 0 && rows.every(r => r.dataset.verdict === 'DROPPED' && r.cells[3].textContent === '{SHUT}/TCP');
    }}""")
    assert "matching flows" in page.inner_text("#sampled")
    page.locator("#flows tbody tr", has_text="policy ingress").first.click()
    assert "ingress denied by: default-deny" in page.inner_text("#attribution")
    assert '"verdict": "DROPPED"' in page.inner_text("#flow-json")


def test_walk_an_arrow(page):
    link(page, "shop/batch", "shop/db", DB).locator("path.hit").click(force=True)
    page.click("#walk")
    outcome = page.locator("#walk-outcome")
    outcome.wait_for()
    assert outcome.inner_text().startswith("DROPPED")
    hops = page.inner_text("#walk-result ol.hops")
    assert "ingress policy of shop/db: DENIED by default-deny" in hops
    link(page, "shop/web", "shop/db", DB).locator("path.hit").click(force=True)
    page.click("#walk")
    page.wait_for_function("() => (document.querySelector('#walk-outcome') || {}).textContent?.startsWith('DELIVERED')")
    assert "ALLOWED by CiliumNetworkPolicy shop/db-from-web rule 0" in page.inner_text("#walk-result ol.hops")


def test_preview_a_policy_writes_nothing(page, shop):
    before = shop.cli("get", "cnp", "-n", "shop", "-o", "json").stdout
    allow_batch = {**DB_FROM_WEB, "metadata": {"name": "db-from-batch", "namespace": "shop"},
                   "spec": {**DB_FROM_WEB["spec"],
                            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "batch"}}],
                                         "toPorts": [{"ports": [{"port": str(DB), "protocol": "TCP"}]}]}]}}
    page.click("#preview-open")
    page.fill("#preview-policy", yaml.safe_dump(allow_batch))
    page.click("#preview-run")
    summary = page.locator("#preview-summary")
    summary.wait_for()
    assert summary.inner_text().startswith("ciliumnetworkpolicy/db-from-batch would be created")
    cells = page.inner_text("#preview-result ul.preview-cells")
    assert f"shop/batch → shop/db TCP {DB}\ndenied → allowed" in cells
    assert not probe(shop.netns("shop/batch"), "tcp", shop.pod_ip("shop/db"), DB)    # nothing applied
    assert shop.cli("get", "cnp", "-n", "shop", "-o", "json").stdout == before
    page.fill("#preview-policy", "kind: Pod\napiVersion: v1\nmetadata: {name: x}")
    page.click("#preview-run")
    page.locator("#preview-result .problem").wait_for()
    assert "a preview takes a policy, not a Pod" in page.inner_text("#preview-result")
