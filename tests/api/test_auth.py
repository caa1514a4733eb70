"""Who may do what: bearer tokens (401 without a valid one) and object-level authorization
(another owner's id answers 404 on every route that takes one: OWASP API1)."""

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from descent.settings import Settings
from store.db import session_scope
from store.models import ApiToken, JobStatus
from store.users import revoke_token
from tests.api.builders import (
    add_checkpoint,
    add_epochs,
    bearer,
    history,
    make_job,
    make_user,
    post_study_and_export,
)
from tests.files import npz_bytes, weights_bytes

# Path parameters of the id routes, and which of the owner's things each one names.
ID_KINDS = {"job_id": "job", "checkpoint_id": "checkpoint", "dataset_id": "dataset"}
ID_KINDS["weights_id"] = "weights"
ID_KINDS.update(study_id="study", export_id="export")


def id_routes(client: TestClient) -> list[tuple[str, str, list[str]]]:
    """(method, path, path parameters) of every API route that takes an id, from the app
    itself: a route added later is walked without changing this test."""
    out = []
    # Included routers are walked too (FastAPI keeps them unflattened in app.routes).
    for route in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        if not route.path.startswith("/v1/"):
            continue
        params = re.findall(r"{(\w+)(?::\w+)?}", route.path)
        for method in sorted(set(route.methods or ()) - {"HEAD", "OPTIONS"}):
            out.append((method, route.path, params))
    return out


def owned_things(client: TestClient) -> dict[str, str]:
    """A job with epochs and a checkpoint, a dataset, weights, a study and an export, all of
    the user 'local'."""
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(3))
    checkpoint_id, _ = add_checkpoint(job_id, 3, best=True)
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())})
    weights = client.post(
        "/v1/weights",
        files={"file": ("w.safetensors", weights_bytes())},
        data={"arch": "mobilenet_v3_small"},
    )
    assert dataset.status_code == weights.status_code == 201, (dataset.text, weights.text)
    return {
        "job": job_id,
        "checkpoint": checkpoint_id,
        "dataset": dataset.json()["id"],
        "weights": weights.json()["id"],
        **post_study_and_export(client, checkpoint_id),
    }


def test_every_id_route_answers_404_to_another_owner(client: TestClient) -> None:
    mine = owned_things(client)
    intruder = bearer(make_user("bob"))
    routes = [r for r in id_routes(client) if r[2]]
    assert len(routes) >= 10, routes  # jobs, metrics, checkpoints, downloads, uploads, ...
    walked = []
    for method, path, params in routes:
        unknown = [p for p in params if p not in ID_KINDS]
        assert not unknown, f"{method} {path}: add its id parameter {unknown} to ID_KINDS"
        url = path.format(**{p: mine[ID_KINDS[p]] for p in params})
        # A route that takes a body gets a valid one: the owner check, not the body, answers.
        body = {"format": "onnx"} if path.endswith("/exports") and method == "POST" else None
        response = client.request(method, url, headers=intruder, json=body)
        assert response.status_code == 404, (method, url, response.status_code, response.text)
        assert "not found" in response.json()["detail"]
        walked.append(f"{method} {path}")
    # ... while the owner reaches every one of them (so the ids above were real ones).
    for method, path, params in routes:
        if method != "GET":
            continue
        url = path.format(**{p: mine[ID_KINDS[p]] for p in params})
        assert client.get(url).status_code != 404, url
    # The listings show the other owner nothing.
    for path in ("/v1/jobs", "/v1/datasets", "/v1/weights"):
        assert client.get(path, headers=intruder).json()["items"] == []
        assert client.get(path).json()["items"]
    assert "DELETE /v1/datasets/{dataset_id}" in walked and "GET /v1/jobs/{job_id}" in walked


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer dsc_not-a-real-token"},
        {"Authorization": "Basic bG9jYWw6cGFzc3dvcmQ="},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
    ids=["missing", "wrong", "basic", "empty", "huge"],
)
def test_every_api_route_needs_a_valid_token(sqlite_client: TestClient, headers: dict) -> None:
    sqlite_client.headers.pop("Authorization")
    routes = id_routes(sqlite_client)
    assert len(routes) >= 15, routes
    for method, path, params in routes:
        url = path.format(**dict.fromkeys(params, "0123456789abcdef"))
        response = sqlite_client.request(method, url, headers=headers)
        assert response.status_code == 401, (method, url, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "token" in response.json()["detail"]


def test_health_and_docs_stay_open(sqlite_client: TestClient) -> None:
    sqlite_client.headers.pop("Authorization")
    for path in ("/healthz", "/docs", "/openapi.json"):
        assert sqlite_client.get(path).status_code == 200, path
    schemes = sqlite_client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def test_tokens_are_stored_as_hashes_only(sqlite_client: TestClient) -> None:
    token = make_user("carol")
    with session_scope() as session:
        rows = session.execute(select(ApiToken.token_hash, ApiToken.name)).all()
    assert (hashlib.sha256(token.encode()).hexdigest(), "tests") in rows
    assert all(token not in (h, n) for h, n in rows)
    assert token.startswith("dsc_") and len(token) > 40
    response = sqlite_client.get("/v1/jobs", headers=bearer(token))
    assert response.status_code == 200


def test_a_revoked_token_is_refused(configure: Callable[..., Settings], tmp_path: Path) -> None:
    from api.main import create_app
    from tests.conftest import migrated

    settings = migrated(
        configure(DESCENT_DATA_DIR=str(tmp_path / "data"), DESCENT_TOKEN_CACHE_SECONDS="0")
    )
    token = make_user("dave")
    with TestClient(create_app(settings), headers=bearer(token)) as client:
        assert client.get("/v1/jobs").status_code == 200
        with session_scope() as session:
            row = session.scalars(
                select(ApiToken).where(
                    ApiToken.token_hash == hashlib.sha256(token.encode()).hexdigest()
                )
            ).one()
            assert row.last_used_at is not None
            revoke_token(session, row.id)
        response = client.get("/v1/jobs")
        assert response.status_code == 401
        assert response.json()["detail"] == "invalid or revoked token"


def test_a_revoked_token_works_for_at_most_the_5_s_cache_window(
    configure: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner of a token is remembered token_cache_seconds (5 s by default): a revoked
    token keeps answering until then, and is refused from then on (a clock the test sets)."""
    import types

    import api.auth
    from api.main import create_app
    from tests.conftest import migrated

    now = [1000.0]
    monkeypatch.setattr(api.auth, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    settings = migrated(configure(DESCENT_DATA_DIR=str(tmp_path / "data")))
    assert settings.token_cache_seconds == 5.0
    token = make_user("erin")
    with TestClient(create_app(settings), headers=bearer(token)) as client:
        assert client.get("/v1/jobs").status_code == 200  # looked up, then remembered
        with session_scope() as session:
            digest = hashlib.sha256(token.encode()).hexdigest()
            row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).one()
            revoke_token(session, row.id)
        now[0] += 4.9
        assert client.get("/v1/jobs").status_code == 200  # still within the window
        now[0] += 0.1
        assert client.get("/v1/jobs").status_code == 401  # 5 s after the lookup


def test_each_owner_sees_only_their_jobs(client: TestClient) -> None:
    from tests.api.builders import SPEC

    mine = client.post("/v1/jobs", json=SPEC).json()
    theirs = client.post("/v1/jobs", json=SPEC, headers=bearer(make_user("erin"))).json()
    assert [j["id"] for j in client.get("/v1/jobs").json()["items"]] == [mine["id"]]
    other = client.get("/v1/jobs", headers=bearer(make_user("erin"))).json()["items"]
    assert [j["id"] for j in other] == [theirs["id"]]
