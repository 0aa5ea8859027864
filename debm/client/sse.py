"""A Server-Sent Events parser (the WHATWG event-stream format) fed line by line, shared by
the sync and async clients' ``events()``."""

from __future__ import annotations

from .types import Event


class SSEParser:
    def __init__(self):
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """One line without its end-of-line; an Event when a blank line completes one."""
        if line == "":
            if not self._data and self._event is None:
                return None
            event = Event.parse(self._event, "\n".join(self._data), self.last_id)
            self._event, self._data = None, []
            return event
        if line.startswith(":"):  # a comment: the server's keep-alive ping
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None
