"""``latent-atlas users token | tokens | revoke-token``: named tokens from the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from web_app import PASSWORD, app_env

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atlas_cli", "users", *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)


def test_tokens_are_created_listed_and_revoked_from_the_cli(tmp_path):
    with app_env(tmp_path):
        from webapp import users_service

        users_service.create_user("carol", PASSWORD)
        laptop = _cli("token", "carol", "--name", "laptop").stdout.strip().splitlines()[-1]
        cluster = _cli("token", "carol", "--name", "cluster").stdout.strip().splitlines()[-1]
        assert users_service.user_for_token(laptop).username == "carol"

        listing = _cli("tokens", "carol")
        assert listing.returncode == 0
        rows = [line.split("\t") for line in listing.stdout.strip().splitlines()]
        assert {row[1] for row in rows} == {"laptop", "cluster"}
        assert all(row[-1] == "active" for row in rows)
        assert laptop not in listing.stdout and cluster not in listing.stdout

        revoked = _cli("revoke-token", "carol", "--name", "laptop")
        assert revoked.returncode == 0 and "revoked 1 token" in revoked.stdout
        assert users_service.user_for_token(laptop) is None
        assert users_service.user_for_token(cluster).username == "carol"

        cluster_id = next(row[0] for row in rows if row[1] == "cluster")
        assert _cli("revoke-token", "carol", "--id", cluster_id).returncode == 0
        assert users_service.user_for_token(cluster) is None
        again = _cli("revoke-token", "carol", "--name", "laptop")
        assert again.returncode == 2 and "no active token" in again.stdout
        assert "revoked" in _cli("tokens", "carol").stdout
