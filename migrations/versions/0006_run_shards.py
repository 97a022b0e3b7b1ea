"""run shards: one row per shard of a run split across workers (issue #14)

``run_shards``: a run of a shardable kind dispatched while >= 2 gpu slots were
free is cut into ``count`` shards (``latent_atlas.analyses.shards``); each row
is one shard's spec, state, attempts, worker, device, times, progress and the
place of its stored part (``result_uri``, under the artifact store's
``shards/<run id>/<idx>/``). Existing runs have no shards and keep their meaning.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_shards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=12), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("device", sa.String(length=100), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gpu_s", sa.Float(), nullable=False, server_default="0"),
        sa.Column("progress", sa.Float(), nullable=False, server_default="0"),
        sa.Column("stage", sa.String(length=200), nullable=False, server_default="queued"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result_uri", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_shards_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_shards")),
        sa.UniqueConstraint("run_id", "idx", name="uq_run_shards_run_idx"),
    )
    with op.batch_alter_table("run_shards", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_shards_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_shards_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_shards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_shards_status"))
        batch_op.drop_index(batch_op.f("ix_run_shards_run_id"))
    op.drop_table("run_shards")
