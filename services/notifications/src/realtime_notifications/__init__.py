"""The notifications service: notification state, REST API, outbox-published events."""

__version__ = "0.1.0"
