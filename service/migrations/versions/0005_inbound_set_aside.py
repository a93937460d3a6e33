"""inbound.set_aside: who a set-aside (ignored or rejected) message came from

"member", "alias" or "party" when mail from a member, a member's other address or a person
we asked was ignored or rejected, so the operator hears of it (check, health, a daily alert).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 18:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.add_column(sa.Column('set_aside', sa.String(length=20), nullable=True))
        batch_op.create_index(batch_op.f('ix_inbound_set_aside'), ['set_aside'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_set_aside'))
        batch_op.drop_column('set_aside')
