"""A reference chat backend: direct messages on the `chat` stream, recoverable."""

__version__ = "0.1.0"
