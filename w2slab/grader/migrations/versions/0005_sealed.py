"""Three-way split: the submission Ladder's shown answer and the sealed holdout's picks and scores.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("submission", sa.Column("shown", sa.String(), nullable=False, server_default="{}"))
    op.create_table(
        "sealed",
        sa.Column("id", sa.Integer(), primary_key=True, nullable=False),
        sa.Column("researcher_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=False),
        sa.Column("testbed", sa.String(200), nullable=False),
        sa.Column("submission_id", sa.Integer(), sa.ForeignKey("submission.id"), nullable=False),
        sa.Column("chosen_by", sa.String(16), nullable=False),
        sa.Column("picked_at", sa.Float(), nullable=False),
        sa.Column("sealed_at", sa.Float(), nullable=True),
        sa.Column("result", sa.String(), nullable=False),
        sa.UniqueConstraint("researcher_id", "testbed", name="uq_sealed_pick"),
    )
    op.create_index("ix_sealed_researcher_id", "sealed", ["researcher_id"])
    op.create_index("ix_sealed_testbed", "sealed", ["testbed"])


def downgrade() -> None:
    op.drop_table("sealed")
    op.drop_column("submission", "shown")
