"""
Domain exceptions and the one ladder that maps each of them to what a door shows: an XMPP stanza
error, a JSON error object, an HTTP status.

Every door catches exceptions at its edge and asks this module how to present them, so one failure
reads the same on every door.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error as jerror

# XMPP stanza error condition -> (default error type, HTTP status)
CONDITIONS: dict[str, tuple[str, int]] = {
    "bad-request": ("modify", 400),
    "conflict": ("cancel", 409),
    "feature-not-implemented": ("cancel", 501),
    "forbidden": ("auth", 403),
    "gone": ("cancel", 410),
    "internal-server-error": ("cancel", 500),
    "item-not-found": ("cancel", 404),
    "jid-malformed": ("modify", 400),
    "not-acceptable": ("modify", 422),
    "not-allowed": ("cancel", 405),
    "not-authorized": ("auth", 401),
    "policy-violation": ("modify", 429),
    "recipient-unavailable": ("wait", 404),
    "remote-server-not-found": ("cancel", 404),
    "resource-constraint": ("wait", 429),
    "service-unavailable": ("cancel", 503),
    "undefined-condition": ("cancel", 500),
    "unexpected-request": ("wait", 400),
    "payload-too-large": ("modify", 413),
    "unsupported-media-type": ("modify", 415),
    "upgrade-required": ("cancel", 426),
}

# Conditions that exist only on the HTTP side; on XMPP they are shown as their nearest stanza
# condition.
_XMPP_EQUIVALENT = {
    "payload-too-large": "policy-violation",
    "unsupported-media-type": "bad-request",
    "upgrade-required": "bad-request",
}


class XMPPJSONError(Exception):
    """
    A failure a client caused or must be told about.

    @ivar condition: an RFC 6120 stanza error condition (or one of the HTTP-only conditions above).
    @ivar text: a human-readable explanation.
    @ivar errorType: the stanza error type (cancel, modify, auth, wait).
    """

    condition = "undefined-condition"

    def __init__(self, text: str = "", condition: str | None = None, errorType: str | None = None):
        super().__init__(text or (condition or self.condition))
        if condition is not None:
            self.condition = condition
        self.text = text
        self.errorType = errorType or CONDITIONS.get(self.condition, ("cancel", 500))[0]

    @property
    def httpStatus(self) -> int:
        return CONDITIONS.get(self.condition, ("cancel", 500))[1]

    def toJSON(self) -> dict[str, Any]:
        """The REST error body: C{{"error": condition, "description": text}}."""
        return {"error": self.condition, "description": self.text or self.condition}

    def toStanzaError(self) -> jerror.StanzaError:
        condition = _XMPP_EQUIVALENT.get(self.condition, self.condition)
        return jerror.StanzaError(condition, self.errorType, self.text or None)


class BadRequest(XMPPJSONError):
    condition = "bad-request"


class NotAuthorized(XMPPJSONError):
    condition = "not-authorized"


class Forbidden(XMPPJSONError):
    condition = "forbidden"


class NotFound(XMPPJSONError):
    condition = "item-not-found"


class Conflict(XMPPJSONError):
    condition = "conflict"


class ServiceUnavailable(XMPPJSONError):
    condition = "service-unavailable"


class StoreUnavailable(XMPPJSONError):
    """The database cannot be reached right now; try again later."""

    condition = "service-unavailable"

    def __init__(self, text: str = "the database is unavailable, try again later"):
        super().__init__(text, errorType="wait")


class PolicyViolation(XMPPJSONError):
    condition = "policy-violation"


class ResourceConstraint(XMPPJSONError):
    condition = "resource-constraint"


class Unprocessable(XMPPJSONError):
    """
    Input that is well-formed but invalid, with one entry per offending field.
    """

    condition = "not-acceptable"

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(text)

    def toJSON(self) -> dict[str, Any]:
        body = super().toJSON()
        body["errors"] = self.errors
        return body


def asError(reason: BaseException | Failure) -> XMPPJSONError:
    """
    Turn any exception into an L{XMPPJSONError}: ours pass through, Twisted stanza errors keep
    their condition, anything else is an internal error (whose details are logged, never shown).
    """
    exc = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exc, XMPPJSONError):
        return exc
    if isinstance(exc, jerror.StanzaError):
        return XMPPJSONError(exc.text or "", condition=exc.condition, errorType=exc.type)
    return XMPPJSONError("internal server error", condition="internal-server-error")
