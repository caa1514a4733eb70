"""Per-owner limits hold under concurrent requests, and a burst of submits is answered 201
or 429, never 503, on both databases (SQLite in its real file, in WAL mode).

The requests go through a real HTTP server (uvicorn in a thread), so they run in its
threadpool on its connection pool, as deployed."""

import httpx

from descent.settings import Settings
from store.db import session_scope
from store.models import Job, Upload
from store.users import set_limits
from tests.api.builders import bearer, make_user, spec
from tests.api.server import at_once, percentile, serve, statuses
from tests.files import csv_bytes
from tests.timing import scaled


def rows(model: type) -> int:
    with session_scope() as session:
        return session.query(model).count()


def test_concurrent_submits_never_pass_the_active_jobs_limit(db_env: Settings) -> None:
    token = make_user(active_jobs=2)
    with serve(db_env) as url:
        results = at_once(
            10,
            lambda client, _: client.post("/v1/jobs", json=spec(), headers=bearer(token)),
            base_url=url,
        )
    assert statuses(results) == {201: 2, 429: 8}, [r.text for r, _ in results]
    assert rows(Job) == 2


def test_concurrent_uploads_never_pass_the_upload_quota(db_env: Settings) -> None:
    token = make_user(upload_bytes=1_000_000)
    content = csv_bytes(rows=33_000)  # about 0.6 MB
    assert 500_000 < len(content) < 1_000_000

    def upload(client: httpx.Client, i: int) -> httpx.Response:
        return client.post(
            "/v1/datasets",
            files={"file": (f"d{i}.csv", content)},
            data={"target": "label"},
            headers=bearer(token),
        )

    with serve(db_env.model_copy(update={"max_body_bytes": 2_000_000})) as url:
        results = at_once(3, upload, base_url=url)
    assert statuses(results) == {201: 1, 413: 2}, [r.text for r, _ in results]
    assert rows(Upload) == 1


def test_a_burst_of_submits_is_answered_201_or_429_never_503(db_env: Settings) -> None:
    tokens = [make_user("ann"), make_user("bob")]
    with session_scope() as session:
        for name in ("ann", "bob"):
            set_limits(session, name, {"active_jobs": 8})
    with serve(db_env) as url:
        results = at_once(
            50,
            lambda client, i: client.post("/v1/jobs", json=spec(), headers=bearer(tokens[i % 2])),
            base_url=url,
        )
    seconds = [s for _, s in results]
    p50, p99 = percentile(seconds, 0.5), percentile(seconds, 0.99)
    # Shown with pytest -s: the numbers are the point of the issue.
    print(f"burst of 50 submits: p50 {p50:.2f} s, p99 {p99:.2f} s, {statuses(results)}")  # noqa: T201
    assert statuses(results) == {201: 16, 429: 34}, [r.text for r, _ in results]
    # Under 5 s on an idle machine (about 1.2 s measured on 2 loaded cores); the bound grows
    # with this machine's load, since the answers are what must not change.
    assert p99 < scaled(5.0), p99
