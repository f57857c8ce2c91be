"""Automated research runs: the launcher's status.json per run and every transcript line.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "researchrun",
        sa.Column("run_id", sa.String(100), primary_key=True, nullable=False),
        sa.Column("sandboxed", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("testbed", sa.String(200), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_researchrun_updated_at", "researchrun", ["updated_at"])
    op.create_table(
        "transcriptline",
        sa.Column("id", sa.Integer(), primary_key=True, nullable=False),
        sa.Column("run_id", sa.String(100), nullable=False),
        sa.Column("researcher", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("ts", sa.Float(), nullable=True),
        sa.Column("line", sa.String(), nullable=False),
        sa.UniqueConstraint("run_id", "researcher", "seq", name="uq_transcript_seq"),
    )


def downgrade() -> None:
    for table in ("transcriptline", "researchrun"):
        op.drop_table(table)
