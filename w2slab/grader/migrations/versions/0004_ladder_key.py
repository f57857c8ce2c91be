"""The Ladder per seed: which of a researcher's ladders an evaluation climbed.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("fingerprint", sa.Column("ladder_key", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("fingerprint", "ladder_key")
