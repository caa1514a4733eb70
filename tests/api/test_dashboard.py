"""The dashboard's files: served without a build step, and nothing fetched from elsewhere."""

import re

from fastapi.testclient import TestClient


def test_dashboard_pages_and_assets(sqlite_client: TestClient) -> None:
    for path in ("/", "/jobs/0123456789abcdef"):
        page = sqlite_client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/dashboard/app.js"' in page.text
        assert 'href="/dashboard/style.css"' in page.text
    script = sqlite_client.get("/dashboard/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert sqlite_client.get("/dashboard/style.css").headers["content-type"].startswith("text/css")
    for path in ("/", "/dashboard/app.js", "/dashboard/style.css"):
        text = sqlite_client.get(path).text
        # Nothing from a CDN: the only absolute URL is the SVG namespace.
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, urls
