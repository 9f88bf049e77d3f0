"""Bearer tokens against the real service with AUTH_TOKENS_FILE: sent, scoped per principal, never shown."""

from __future__ import annotations

import pytest

from asyncinfer_client import AuthenticationError, Client, NotFound
from tests.client.helpers import SETOSA, TOKENS, run_cli


def test_token_authenticates_and_scopes_jobs_to_their_owner(auth_stack):
    with Client(auth_stack.url, token=None) as anonymous:
        with pytest.raises(AuthenticationError) as raised:
            anonymous.submit([SETOSA])
        assert raised.value.status == 401
    with Client(auth_stack.url, token=TOKENS["alice"]) as alice, Client(auth_stack.url, token=TOKENS["bob"]) as bob:
        job = alice.submit([SETOSA])
        assert job.result(timeout=20)["class_name"] == "setosa"
        with pytest.raises(NotFound):
            bob.get(job.id)  # another principal's job is not found
        with Client(auth_stack.url, token=TOKENS["ops"]) as ops:
            assert ops.get(job.id).status == "completed"  # admin sees every job


def test_cli_takes_the_token_from_the_environment_or_a_file_and_never_prints_it(auth_stack, tmp_path):
    from_env = run_cli(["predict", "[[5.1,3.5,1.4,0.2]]"], auth_stack.url, ASYNCINFER_TOKEN=TOKENS["alice"])
    assert from_env.returncode == 0, from_env.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["bob"] + "\n")
    from_file = run_cli(["--token-file", str(token_file), "predict", "[[5.1,3.5,1.4,0.2]]"], auth_stack.url)
    assert from_file.returncode == 0, from_file.stderr
    wrong = run_cli(["predict", "[[5.1,3.5,1.4,0.2]]"], auth_stack.url, ASYNCINFER_TOKEN="not-a-known-token")
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
    assert "not-a-known-token" not in wrong.stderr + wrong.stdout


def test_a_missing_token_names_where_to_set_it(auth_stack, client_env):
    with Client(auth_stack.url) as anonymous, pytest.raises(AuthenticationError, match="ASYNCINFER_TOKEN"):
        anonymous.predict([SETOSA])
    refused = run_cli(["predict", "[[5.1,3.5,1.4,0.2]]"], auth_stack.url)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    assert "set ASYNCINFER_TOKEN" in refused.stderr and "--token-file" in refused.stderr, refused.stderr
