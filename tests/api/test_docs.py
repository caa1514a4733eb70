"""/docs and /redoc work offline: every script, style and icon they load is served by the API."""

import re

import pytest
from fastapi.testclient import TestClient

KINDS = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_only_local_assets_and_they_answer(sqlite_client: TestClient, page: str) -> None:
    anonymous = TestClient(sqlite_client.app)  # the docs need no token
    response = anonymous.get(page)
    assert response.status_code == 200
    html = response.text
    assert "://" not in html, "the page loads something from another host"
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", html)
    assert {a[a.rindex(".") :] for a in assets} >= ({".js", ".css"} if page == "/docs" else {".js"})
    for url in assets:
        asset = anonymous.get(url)
        assert asset.status_code == 200, url
        assert KINDS[url[url.rindex(".") :]] in asset.headers["content-type"], url
        assert len(asset.content) > 1000, url  # the real thing, not a stub
    spec = re.search(r"""(?:url: |spec-url=)["'](/[^"']+)["']""", html)
    assert spec is not None and anonymous.get(spec.group(1)).json()["info"]["title"] == "Descent"
