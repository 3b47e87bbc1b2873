"""The repository's fixtures (a real RabbitMQ, databases, tokens), as tests/ has them."""

from conftest import amqp_url, database_url, exchange, make_token, postgres_url

__all__ = ["amqp_url", "database_url", "exchange", "make_token", "postgres_url"]
