"""What a chat message is, and which ones are refused (no I/O).

A client sends `message.send` with `{"to": <user>, "text": <1-2000 characters>}`; the
sender is the user of its token (`InboundMessage.user_id`), never a field of the data.
Sending to oneself is allowed, as a note to self: one user, so one `message.created`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from realtime_shared.routing import fits_routing_key

STREAM = "chat"

SEND = "message.send"
"""Client → backend: send a direct message."""
CREATED = "message.created"
"""Backend → both users: a message was stored, numbered for each of them."""
REJECTED = "message.rejected"
"""Backend → the sending connection only: why a message was not sent."""

MAX_TEXT_CHARS = 2_000
"""A chat line, even a pasted paragraph; longer text belongs in a file or a document."""


class Rejected(ValueError):
    """A message not sent; the text is the reason, shown to its sender."""


@dataclass(frozen=True, slots=True)
class DirectMessage:
    sender: str
    recipient: str
    text: str

    @property
    def users(self) -> list[str]:
        """Whose chat key gets it: both, or one for a note to self; sorted, so that every
        writer takes their locks in the same order."""
        return sorted({self.sender, self.recipient})


def parse_send(sender: str, data: dict[str, Any]) -> DirectMessage:
    """`message.send`'s data as a message from `sender`, or Rejected saying why not."""
    recipient, text = data.get("to"), data.get("text")
    if not isinstance(recipient, str) or not recipient:
        raise Rejected("'to' must name the user to send to")
    if not fits_routing_key(STREAM, recipient):
        raise Rejected("'to' is not a valid user id")
    if not isinstance(text, str) or not text.strip():
        raise Rejected("'text' must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise Rejected(f"'text' is longer than {MAX_TEXT_CHARS} characters")
    return DirectMessage(sender, recipient, text)
