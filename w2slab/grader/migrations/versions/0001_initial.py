"""Initial grader schema: researchers, audit log, code store, submissions, forum.

Full-text search over posts: an FTS5 table kept in step by triggers on SQLite, a stored
``tsvector`` column with a GIN index on PostgreSQL.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), primary_key=True, nullable=False)


def upgrade() -> None:
    op.create_table(
        "researcher",
        _id(),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("evaluations", sa.Integer(), nullable=False),
        sa.Column("submissions", sa.Integer(), nullable=False),
    )
    op.create_table(
        "audit",
        _id(),
        sa.Column("researcher_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("testbed", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("predictions_sha256", sa.String(64), nullable=False),
        sa.Column("score", sa.String(), nullable=False),
    )
    op.create_index("ix_audit_who", "audit", ["researcher_id", "kind", "created_at"])
    op.create_index("ix_audit_created_at", "audit", ["created_at"])
    op.create_table(
        "snapshot",
        sa.Column("sha256", sa.String(64), primary_key=True, nullable=False),
        sa.Column("uploader_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=False),
        sa.Column("parent_sha256", sa.String(64), sa.ForeignKey("snapshot.sha256"), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("unpacked_size", sa.Integer(), nullable=False),
        sa.Column("n_files", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_snapshot_uploader_id", "snapshot", ["uploader_id"])
    op.create_table(
        "submission",
        _id(),
        sa.Column("researcher_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=False),
        sa.Column("testbed", sa.String(200), nullable=False),
        sa.Column("method_name", sa.String(200), nullable=False),
        sa.Column("snapshot_sha256", sa.String(64), sa.ForeignKey("snapshot.sha256"), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("seeds", sa.String(), nullable=False),
        sa.Column("pgr", sa.Float(), nullable=True),
        sa.Column("pgr_lo", sa.Float(), nullable=True),
        sa.Column("pgr_hi", sa.Float(), nullable=True),
        sa.Column("pgr_se", sa.Float(), nullable=True),
        sa.Column("transfer_acc", sa.Float(), nullable=False),
        sa.Column("weak_acc", sa.Float(), nullable=False),
        sa.Column("ceiling_acc", sa.Float(), nullable=False),
        sa.Column("per_seed", sa.String(), nullable=False),
        sa.Column("predictions_sha256", sa.String(64), nullable=False),
    )
    op.create_index("ix_submission_researcher_id", "submission", ["researcher_id"])
    op.create_index("ix_submission_testbed", "submission", ["testbed"])
    op.create_table(
        "post",
        _id(),
        sa.Column("author_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("body", sa.String(), nullable=False),
        sa.Column("metrics", sa.String(), nullable=True),
        sa.Column("submission_ids", sa.String(), nullable=False),
        sa.Column("snapshot_shas", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("n_comments", sa.Integer(), nullable=False),
    )
    op.create_index("ix_post_author_id", "post", ["author_id"])
    op.create_index("ix_post_kind", "post", ["kind"])
    op.create_index("ix_post_created_at", "post", ["created_at"])
    op.create_table(
        "comment",
        _id(),
        sa.Column("post_id", sa.Integer(), sa.ForeignKey("post.id"), nullable=False),
        sa.Column("author_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=False),
        sa.Column("body", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_comment_post_id", "comment", ["post_id"])
    op.create_table(
        "vote",
        _id(),
        sa.Column("post_id", sa.Integer(), sa.ForeignKey("post.id"), nullable=False),
        sa.Column("researcher_id", sa.Integer(), sa.ForeignKey("researcher.id"), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("post_id", "researcher_id", name="uq_vote_once"),
    )
    op.create_index("ix_vote_post_id", "vote", ["post_id"])

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE post_fts USING fts5(title, body, content='post', content_rowid='id', "
            "tokenize='porter unicode61')"
        )
        op.execute(
            "CREATE TRIGGER post_fts_ai AFTER INSERT ON post BEGIN "
            "INSERT INTO post_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END"
        )
        op.execute(
            "CREATE TRIGGER post_fts_ad AFTER DELETE ON post BEGIN "
            "INSERT INTO post_fts(post_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body); END"
        )
        op.execute(
            "CREATE TRIGGER post_fts_au AFTER UPDATE OF title, body ON post BEGIN "
            "INSERT INTO post_fts(post_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body); "
            "INSERT INTO post_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END"
        )
    elif dialect == "postgresql":
        op.execute(
            "ALTER TABLE post ADD COLUMN search tsvector GENERATED ALWAYS AS "
            "(setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
            "to_tsvector('english', coalesce(body, ''))) STORED"
        )
        op.execute("CREATE INDEX ix_post_search ON post USING GIN (search)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trig in ("post_fts_ai", "post_fts_ad", "post_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trig}")
        op.execute("DROP TABLE IF EXISTS post_fts")
    for table in ("vote", "comment", "post", "submission", "snapshot", "audit", "researcher"):
        op.drop_table(table)
