"""The admin commands (users, tokens) and the embedded default's token file."""

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from descent.admin import serve_token
from descent.cli import main
from descent.settings import Settings
from store.db import session_scope
from store.users import authenticate


def test_users_and_tokens_from_the_command_line(
    sqlite_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["users", "create", "alice", "--limit", "epochs=100"]) == 0
    assert "epochs=100" in capsys.readouterr().out
    assert main(["users", "create", "alice"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["users", "create", "../evil"]) == 1
    assert "invalid user name" in capsys.readouterr().err
    assert main(["users", "limits", "alice", "active_jobs=2", "epochs=default"]) == 0
    out = capsys.readouterr().out
    assert "active_jobs=2," in out and "epochs=10000 (default)" in out
    assert main(["users", "limits", "alice", "colour=blue"]) == 1
    assert "unknown limit" in capsys.readouterr().err

    assert main(["tokens", "create", "alice", "--name", "laptop"]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert token.startswith("dsc_") and "shown once" in captured.err
    with session_scope() as session:
        assert authenticate(session, token) == "alice"
    assert main(["tokens", "list", "alice"]) == 0
    listed = capsys.readouterr().out
    assert "laptop" in listed and "active" in listed and token not in listed
    token_id = listed.split("\t", 1)[0]
    assert main(["tokens", "revoke", token_id]) == 0
    with session_scope() as session:
        assert authenticate(session, token) is None
    assert main(["tokens", "create", "nobody"]) == 1
    assert "no user named 'nobody'" in capsys.readouterr().err


def test_admin_commands_need_a_migrated_database(
    configure: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(DESCENT_DATA_DIR=str(tmp_path / "empty"))
    assert main(["users", "list"]) == 1
    assert "descent migrate" in capsys.readouterr().err


def test_serve_makes_the_local_token_once_and_keeps_it_private(
    sqlite_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    token = serve_token(sqlite_env.data_dir)
    path = sqlite_env.data_dir / "token"
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token in capsys.readouterr().out  # shown when made
    assert serve_token(sqlite_env.data_dir) == token  # kept on the next start
    assert token not in capsys.readouterr().out
    with session_scope() as session:
        assert authenticate(session, token) == "local"  # the file's token is the local user's
    from api.main import create_app

    with TestClient(create_app(sqlite_env)) as client:
        assert client.get("/v1/jobs").status_code == 401
        ok = client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
    path.write_text("dsc_stale\n")  # a token the database does not know: a new one is made
    fresh = serve_token(sqlite_env.data_dir)
    assert fresh != token and path.read_text().strip() == fresh
    with session_scope() as session:
        assert authenticate(session, fresh) == "local"
