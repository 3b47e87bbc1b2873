"""Alembic migrations, shipped inside the package so `notifications-service migrate` finds them."""
