import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = str(item.fspath)
        if "/privileged/" in path or "/e2e/" in path:
            item.add_marker(pytest.mark.privileged)
        if "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _needs_root(request):
    if request.node.get_closest_marker("privileged") and os.geteuid() != 0:
        pytest.fail("privileged tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
