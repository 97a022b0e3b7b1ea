"""credentials: revocable named tokens, session versions, shared login rate limits

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

* ``api_tokens.revoked_at``: a token is refused once it is set. Existing tokens
  were already stored as sha256 hashes with a name and times (0001), so they
  carry over unchanged and stay valid; an unnamed one is named ``token <id>``
  so that every token can be told apart on the page and in the CLI.
* ``users.session_version``: part of Flask-Login's alternative id; raising it
  ends every session (and remember-me cookie) of the account. Existing
  sessions carried the bare user id and must log in again once.
* ``rate_limits``: fixed-window counters of the login limit, shared by every
  web process on the embedded default (Redis holds them when it is the broker).

Downgrade deletes revoked tokens first, so none comes back to life.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE api_tokens SET name = 'token ' || CAST(id AS VARCHAR(20)) WHERE name = ''")

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("session_version", sa.Integer(), nullable=False, server_default="1")
        )

    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limits")),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("session_version")
    op.execute("DELETE FROM api_tokens WHERE revoked_at IS NOT NULL")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
