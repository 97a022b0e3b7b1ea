"""fair share: share weights, daily GPU caps, run priorities, the worker registry, the dispatch lock

* ``users.share_weight`` (1.0 for everyone) and ``users.daily_gpu_cap_s``
  (none): the fair-share dispatcher's per-member settings.
* ``runs.priority`` (0 for every run): an admin's "move" in the queue.
* ``worker_slots``: live Celery workers (node name, queues, concurrency,
  heartbeat), whose slots gate the ``gpu`` queue.
* ``dispatch_lock``: one row (id 1) the dispatcher locks while it fills slots.

Existing runs and users keep their meaning: equal weights, no caps, no moves.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("share_weight", sa.Float(), nullable=False, server_default="1.0"))
        batch_op.add_column(sa.Column("daily_gpu_cap_s", sa.Integer(), nullable=True))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "worker_slots",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_slots")),
    )
    with op.batch_alter_table("worker_slots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_worker_slots_heartbeat_at"), ["heartbeat_at"], unique=False)
    lock = op.create_table(
        "dispatch_lock",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_lock")),
    )
    op.bulk_insert(lock, [{"id": 1, "taken_at": None}])


def downgrade() -> None:
    op.drop_table("dispatch_lock")
    with op.batch_alter_table("worker_slots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_worker_slots_heartbeat_at"))
    op.drop_table("worker_slots")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("priority")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("daily_gpu_cap_s")
        batch_op.drop_column("share_weight")
