"""clinical documents and the jobs that wait for them

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clinical_documents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("source_uid", sa.String(length=64), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_uid"),
    )
    with op.batch_alter_table("clinical_documents", schema=None) as batch_op:
        for column in ("patient_id", "study_uid", "accession_number", "state"):
            batch_op.create_index(
                batch_op.f(f"ix_clinical_documents_{column}"), [column], unique=False
            )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("accession_number", sa.String(length=64), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("text_outcome", sa.String(length=16), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("text_deadline", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("fallback_pipeline", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("clinical_document_ids", sa.JSON(), server_default="[]", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in (
            "clinical_document_ids",
            "fallback_pipeline",
            "text_deadline",
            "text_outcome",
            "accession_number",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("clinical_documents", schema=None) as batch_op:
        for column in ("state", "accession_number", "study_uid", "patient_id"):
            batch_op.drop_index(batch_op.f(f"ix_clinical_documents_{column}"))
    op.drop_table("clinical_documents")
