"""Research integrity: prediction fingerprints (dev-answer reuse and probe detection), submission
audits and integrity flags.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fingerprint",
        sa.Column("id", sa.Integer(), primary_key=True, nullable=False),
        sa.Column("audit_id", sa.Integer(), sa.ForeignKey("audit.id"), nullable=True),
        sa.Column("researcher_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=False),
        sa.Column("testbed", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("bits", sa.LargeBinary(), nullable=False),
        sa.Column("anchor_id", sa.Integer(), nullable=True),
        sa.Column("answer", sa.String(), nullable=False),
        sa.Column("nearest_own", sa.Integer(), nullable=True),
        sa.Column("nearest_own_id", sa.Integer(), nullable=True),
        sa.Column("nearest_other", sa.Integer(), nullable=True),
        sa.Column("nearest_other_id", sa.Integer(), nullable=True),
        sa.Column("nearest_other_researcher_id", sa.Integer(), nullable=True),
        sa.Column("flipped", sa.String(), nullable=False),
    )
    op.create_index("ix_fingerprint_scan", "fingerprint", ["testbed", "kind", "id"])
    op.create_index("ix_fingerprint_audit_id", "fingerprint", ["audit_id"])
    op.create_index("ix_fingerprint_researcher_id", "fingerprint", ["researcher_id"])
    op.create_table(
        "submissioncheck",
        sa.Column("submission_id", sa.Integer(), sa.ForeignKey("submission.id"), primary_key=True, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("predictions", sa.LargeBinary(), nullable=False),
        sa.Column("result", sa.String(), nullable=False),
        sa.Column("teacher_free", sa.Boolean(), nullable=False),
        sa.Column("flags", sa.String(), nullable=False),
        sa.Column("post_id", sa.Integer(), nullable=True),
    )
    op.create_index("ix_submissioncheck_status", "submissioncheck", ["status"])
    op.create_table(
        "flag",
        sa.Column("id", sa.Integer(), primary_key=True, nullable=False),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("researcher_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=True),
        sa.Column("submission_id", sa.Integer(), sa.ForeignKey("submission.id"), nullable=True),
        sa.Column("testbed", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("evidence", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_flag_researcher_id", "flag", ["researcher_id"])
    op.create_index("ix_flag_submission_id", "flag", ["submission_id"])
    op.create_index("ix_flag_created_at", "flag", ["created_at"])


def downgrade() -> None:
    for table in ("flag", "submissioncheck", "fingerprint"):
        op.drop_table(table)
