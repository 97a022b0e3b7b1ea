"""run management: notes, deletion, stars and a record of every change

* ``runs.note`` (Markdown text, empty by default), ``runs.deleted_at`` and
  ``runs.deleted_by_id``: a deleted run keeps its row, so its page says so.
* ``run_events``: who changed what on a run, when (rename, tags, note, star,
  unstar, delete), added only.
* ``run_stars``: each member's stars.

Existing runs get an empty note and are not deleted; nothing else changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("deleted_by_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_runs_deleted_at"), ["deleted_at"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_runs_deleted_by_id_users"), "users",
                                    ["deleted_by_id"], ["id"], ondelete="SET NULL")
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_events_run_id_runs"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_run_events_user_id_users"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_events")),
    )
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_events_run_id"), ["run_id"], unique=False)
    op.create_table(
        "run_stars",
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_stars_run_id_runs"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_run_stars_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "user_id", name=op.f("pk_run_stars")),
    )
    with op.batch_alter_table("run_stars", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_stars_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_stars", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_stars_user_id"))
    op.drop_table("run_stars")
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_events_run_id"))
    op.drop_table("run_events")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_runs_deleted_by_id_users"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_runs_deleted_at"))
        batch_op.drop_column("deleted_by_id")
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("note")
