"""A Server-Sent Events parser (the WHATWG event-stream format) fed line by line, and the
resumable stream state around it: both shared by the sync and async clients' ``events()``,
which differ only in how they read lines and sleep."""

from __future__ import annotations

from .types import DebmError, Event


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


class ResumableStream:
    """One job's event stream across reconnects: the Last-Event-ID to resume from, and how
    many connections in a row were lost (more than ``reconnect`` raises DebmError)."""

    def __init__(self, job_id: str, last_event_id: str | None, reconnect: int):
        self.job_id, self.reconnect, self.failures = job_id, reconnect, 0
        self.parser = SSEParser()
        self.parser.last_id = last_event_id
        self.path = f"/jobs/{job_id}/events"
        self.got_event = False

    def headers(self) -> dict[str, str]:
        """Headers of the next connection (resume after the last event seen)."""
        self.got_event = False
        return {"Last-Event-ID": self.parser.last_id} if self.parser.last_id else {}

    def feed(self, line: str) -> Event | None:
        event = self.parser.feed(line)
        if event is not None:
            self.got_event, self.failures = True, 0
        return event

    def connection_ended(self, lost: Exception | None) -> float:
        """After a connection ends without the end event: raise when too many were lost in a
        row, else the seconds to wait before reconnecting."""
        if lost is None and not self.got_event:
            lost = RuntimeError("closed without an event")
        if lost is not None:
            self.failures += 1
            if self.failures > self.reconnect:
                raise DebmError(f"event stream of job {self.job_id} lost: {lost}") from lost
        return min(1.0, (self.parser.retry_ms or 500) / 1000)
