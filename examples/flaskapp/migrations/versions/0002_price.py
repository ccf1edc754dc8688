"""v2: items get a price, filled in for the existing rows."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("items", sa.Column("price", sa.Integer))
    op.execute("UPDATE items SET price = 10 * length(name)")


def downgrade() -> None:
    op.drop_column("items", "price")
