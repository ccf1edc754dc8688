"""v1: the items table, with a few rows."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    items = op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(80), nullable=False),
    )
    op.bulk_insert(items, [{"name": "apple"}, {"name": "pear"}, {"name": "plum"}])


def downgrade() -> None:
    op.drop_table("items")
