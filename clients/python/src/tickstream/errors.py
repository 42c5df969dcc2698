"""The one error type this library raises for what the server (or the network) said."""

from __future__ import annotations

__all__ = ["TickstreamError"]


class TickstreamError(Exception):
    """An error with the server's ``code`` (or one of the library's own).

    ``status`` is the HTTP status of a refused request or handshake, ``channel`` the
    subscription it ends (if any), and ``retry_after`` the seconds the server asked to
    wait (a 429's ``Retry-After``, a ``rate_limited`` frame's ``retry_after``).

    Codes of the library's own: ``unreachable`` (no answer from the server),
    ``token_error`` (the token function raised), ``token_expired`` (a fixed token ran
    out), ``policy`` (the server closed the socket for a message this library should
    not have sent), ``tls`` (an untrusted certificate), ``bad_url``, ``closed`` (the
    client is closed), ``already_subscribed``, ``internal`` (a bug of this library),
    ``bad_response`` (a REST answer that is not JSON), and the ``bad_*`` codes
    ``subscribe`` raises before asking the server.
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        status: int | None = None,
        channel: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message or code
        self.status = status
        self.channel = channel
        self.retry_after = retry_after

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v!r}"
            for k, v in (("status", self.status), ("channel", self.channel), ("retry_after", self.retry_after))
            if v is not None
        )
        return f"TickstreamError({self.code!r}, {self.message!r}{extra})"
