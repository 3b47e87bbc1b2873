"""The notifications service: notification state, REST API, outbox-published events."""
