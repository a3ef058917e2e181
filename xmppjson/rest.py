"""
The REST door: the original web API (C{/users}, C{/login}) kept byte-compatible, and what users of
a chat server expect beyond it (profile, logout, password change, roster, health, OpenAPI).

One leaf resource, L{RestResource}, routes every request by path and method through the table
L{OPERATIONS}; the same table describes the API as OpenAPI 3 (L{openAPI}), so the description
served at C{/openapi.json} cannot drift from the routing.  Every failure, whatever raised it, is
turned into a JSON error by one function, L{errorResponse}, on top of the ladder in
L{xmppjson.error}.

See C{docs/rest.md} for the API as a user sees it.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from xmppjson import __version__, jsonstanza
from xmppjson.accounts import Accounts
from xmppjson.config import Config
from xmppjson.error import (
    BadRequest,
    Forbidden,
    NotAuthorized,
    NotFound,
    StoreUnavailable,
    Unprocessable,
    XMPPJSONError,
    asError,
)
from xmppjson.im.archive import (
    archivedMessage,
    pageSize,
    parseStamp,
    readable,
    withFilter,
)
from xmppjson.storage import PROFILE_FIELDS, ArchiveEntry, ArchiveQuery

# -- the response shapes ---------------------------------------------------------------------

#: The keys of the C{POST /login} response after C{token}, in the order of the original web
#: API (C{webApi.md}), misspelt C{streer_2} included: clients were written against it.
LOGIN_KEYS: tuple[str, ...] = (
    "jid",
    "full_name",
    "nick_name",
    "company",
    "department",
    "position",
    "role",
    "street",
    "streer_2",
    "city",
    "state",
    "zip_code",
    "country",
    "about",
    "last_seen",
    "presence",
    "status",
    "email",
    "www",
    "phone",
    "birthday",
    "avatar",
)

#: Longest value of one profile field, in characters.
MAX_PROFILE_VALUE = 16 * 1024

#: Seconds a client is told to wait (C{Retry-After}) when the database is unavailable.
RETRY_AFTER = 5

#: Seconds C{GET /health} waits for the database before calling it unavailable.
HEALTH_TIMEOUT = 5.0

CORS_ALLOW_HEADERS = "Authorization, Content-Type"
CORS_EXPOSE_HEADERS = "Allow, Retry-After, WWW-Authenticate"
CORS_MAX_AGE = "86400"


def formatTimestamp(value: datetime.datetime | None) -> str | None:
    """
    ISO 8601 in UTC with microseconds and C{Z}, as the original API sent C{last_seen}
    (C{2018-01-27T11:11:11.508393Z}); C{None} stays C{None}.  A naive datetime is taken as UTC.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def profileBody(jid: str, profile: dict[str, Any]) -> dict[str, Any]:
    """
    The profile as the API shows it: C{jid}, then every key of L{LOGIN_KEYS} in order.
    """
    body: dict[str, Any] = {"jid": jid}
    for key in LOGIN_KEYS[1:]:
        value = profile.get(key)
        if key == "last_seen":
            value = formatTimestamp(value)
        elif key in ("presence", "status"):
            value = value or ""
        body[key] = value
    return body


# -- errors that only HTTP has ---------------------------------------------------------------


class MethodNotAllowed(XMPPJSONError):
    """The path exists but not with this method; C{allowed} goes into the C{Allow} header."""

    condition = "not-allowed"

    def __init__(self, method: str, allowed: list[str]):
        super().__init__(f"{method} is not allowed here; use {', '.join(allowed)}")
        self.allowed = allowed


class PayloadTooLarge(XMPPJSONError):
    condition = "payload-too-large"


class UnsupportedMediaType(XMPPJSONError):
    condition = "unsupported-media-type"


class BadToken(NotAuthorized):
    """A missing, unknown or expired token (C{WWW-Authenticate: Bearer} is added)."""


def errorResponse(reason: BaseException | Failure) -> tuple[int, dict[str, Any], dict[str, str]]:
    """
    The one mapping of any failure to an HTTP response: C{(status, JSON body, headers)}.

    Our exceptions keep their condition and text; anything else becomes a 500
    C{internal-server-error} whose details are only logged (by the caller).
    """
    error = asError(reason)
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    if error.condition == "not-authorized":
        headers["WWW-Authenticate"] = 'Bearer realm="xmppjson"'
    if error.condition == "service-unavailable":
        headers["Retry-After"] = str(RETRY_AFTER)
    retryAfter = getattr(error, "retryAfterHeader", None)
    if retryAfter is not None:
        # a throttle (xmppjson.accounts.Throttled) knows how long the client must wait
        headers["Retry-After"] = retryAfter
    return error.httpStatus, error.toJSON(), headers


def clientAddress(request: Any, trustedProxies: tuple[str, ...] = ()) -> str | None:
    """
    The address of the client behind C{request}, as throttles count it: the peer's IP address,
    or, when the peer is one of C{trustedProxies}, the last address in C{X-Forwarded-For} that
    is not itself a trusted proxy (the ones before it are whatever the client chose to write).
    C{None} when the peer has no IP address (a Unix socket without a trusted proxy).
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if host is None or host not in trustedProxies:
        return host
    forwarded: list[str] = []
    for value in request.requestHeaders.getRawHeaders(b"x-forwarded-for", []):
        forwarded.extend(part.strip() for part in value.decode("latin-1").split(","))
    for candidate in reversed(forwarded):
        if candidate and candidate not in trustedProxies:
            return candidate
    return host


# -- the route table -------------------------------------------------------------------------

@dataclass
class Reply:
    """What a handler answers: a status, a JSON body (C{None} for no body) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """
    One method on one path: how it is handled and how it is described in OpenAPI.

    @ivar path: the OpenAPI path template, e.g. C{/users/{localpart}}.
    @ivar handler: the name of the L{RestResource} method serving it.
    @ivar body: the JSON Schema of the request body, or C{None} if it takes none.
    @ivar responses: status -> (description, schema reference or C{None}).
    @ivar auth: whether a token is required (then 401 is documented).
    @ivar query: OpenAPI parameter objects for the query string.
    """

    method: str
    path: str
    handler: str
    summary: str
    description: str = ""
    body: dict[str, Any] | None = None
    responses: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    auth: bool = False
    errors: tuple[int, ...] = ()
    query: tuple[dict[str, Any], ...] = ()

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))


_CREDENTIALS_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["jid", "password"],
    "properties": {
        "jid": {
            "type": "string",
            "description": "the localpart (or a bare JID of this server's domain)",
            "example": "szymon",
        },
        "password": {"type": "string", "example": "123456"},
    },
}

_PROFILE_PATCH_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        name: {"type": ["string", "null"], "maxLength": MAX_PROFILE_VALUE} for name in PROFILE_FIELDS
    },
}

_PASSWORD_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["password", "old_password"],
    "properties": {
        "password": {"type": "string", "description": "the new password"},
        "old_password": {"type": "string", "description": "the current password"},
    },
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET", "/users/{localpart}", "getUser", "Check whether a user exists",
        "The localpart is nodeprep-normalised first, so `Ewa` and `ewa` name the same user.",
        responses={200: ("the user exists", "Jid"), 404: ("no such user", "Error")},
    ),
    Operation(
        "POST", "/users", "postUsers", "Register a user",
        "Registration may be closed by the server operator (`--registration closed`).",
        body=_CREDENTIALS_BODY,
        responses={
            201: ("registered", "Jid"),
            403: ("registration is closed", "Error"),
            409: ("the localpart is taken", "Error"),
            422: ("invalid localpart or password", "ValidationError"),
        },
    ),
    Operation(
        "POST", "/login", "postLogin", "Log in and get a token",
        "Issues a new token; earlier tokens stay valid until they expire or are revoked.",
        body=_CREDENTIALS_BODY,
        responses={200: ("logged in", "Login"), 401: ("wrong jid or password", "Error")},
    ),
    Operation(
        "POST", "/logout", "postLogout", "Revoke the presented token",
        responses={204: ("the token is revoked", None)}, auth=True,
    ),
    Operation(
        "GET", "/me", "getMe", "Read your own profile",
        responses={200: ("the profile", "Profile")}, auth=True,
    ),
    Operation(
        "PATCH", "/me", "patchMe", "Update your own profile",
        "Only the given fields change; `null` clears a field.",
        body=_PROFILE_PATCH_BODY,
        responses={200: ("the updated profile", "Profile"),
                   422: ("unknown field or a value that is not a string or null",
                         "ValidationError")},
        auth=True,
    ),
    Operation(
        "PATCH", "/users/{localpart}", "patchUser", "Update your own profile (by localpart)",
        "Same as `PATCH /me`; the localpart must be your own.",
        body=_PROFILE_PATCH_BODY,
        responses={200: ("the updated profile", "Profile"),
                   403: ("not your own profile", "Error"),
                   422: ("unknown field or a value that is not a string or null",
                         "ValidationError")},
        auth=True,
    ),
    Operation(
        "POST", "/me/password", "postPassword", "Change your password",
        "Requires the current password.  Tokens already issued stay valid.",
        body=_PASSWORD_BODY,
        responses={204: ("the password is changed", None),
                   403: ("old_password is wrong", "Error"),
                   422: ("the new password is not acceptable", "ValidationError")},
        auth=True,
    ),
    Operation(
        "GET", "/me/roster", "getRoster", "Read your own roster",
        responses={200: ("the roster", "Roster")}, auth=True,
    ),
    Operation(
        "GET", "/me/history", "getHistory", "Read your message history (archive)",
        "One page of your message archive (the same one XMPP clients query with XEP-0313), "
        "oldest first.  Without `after` or `before` the page starts at the oldest message; "
        "`before=` (empty) gives the newest page.  Page backwards with `before=<first>`, "
        "forwards with `after=<last>`.",
        responses={200: ("one page of history", "History"),
                   400: ("a malformed parameter", "Error"),
                   404: ("`before` or `after` names an id that is not in your archive", "Error"),
                   501: ("the server keeps no history (`archive` is off)", "Error")},
        auth=True,
        query=(
            {"name": "with", "in": "query", "schema": {"type": "string"},
             "description": "only messages with this JID: a bare JID matches all its resources, "
                            "a full JID only that one"},
            {"name": "start", "in": "query", "schema": {"type": "string", "format": "date-time"},
             "description": "only messages at or after this instant (ISO 8601 with time zone)"},
            {"name": "end", "in": "query", "schema": {"type": "string", "format": "date-time"},
             "description": "only messages at or before this instant"},
            {"name": "after", "in": "query", "schema": {"type": "string"},
             "description": "the page starts right after this message id"},
            {"name": "before", "in": "query", "schema": {"type": "string"},
             "description": "the page ends right before this message id; empty: the newest page"},
            {"name": "max", "in": "query",
             "schema": {"type": "integer", "minimum": 0, "default": 50},
             "description": "messages per page, at most 250 (larger values are cut to 250); "
                            "0 only counts"},
        ),
    ),
    Operation(
        "GET", "/health", "getHealth", "Is the server and its database up?",
        responses={200: ("everything is up", "Health"),
                   503: ("the database is unavailable", "Health")},
    ),
    Operation(
        "GET", "/openapi.json", "getOpenAPI", "This description of the API",
        responses={200: ("an OpenAPI 3.1 document", None)},
    ),
)


# -- the resource ----------------------------------------------------------------------------


def _historyQuery(request: server.Request) -> ArchiveQuery:
    """
    The archive query of C{GET /me/history}'s query string, validated as XEP-0313 queries are.

    @raise BadRequest: a malformed value.
    """
    args: dict[bytes, list[bytes]] = request.args or {}
    values: dict[str, str] = {}
    for name in ("with", "start", "end", "after", "before", "max"):
        raw = args.get(name.encode("ascii"))
        if raw:
            try:
                values[name] = raw[0].decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"{name}: not UTF-8") from None
    arguments: dict[str, Any] = {}
    if values.get("with", "").strip():
        arguments["withJID"], arguments["withResource"] = withFilter(values["with"])
    for name in ("start", "end"):
        if values.get(name, "").strip():
            arguments[name] = parseStamp(values[name], name)
    if values.get("after", "").strip():
        arguments["after"] = values["after"].strip()
    if "before" in values:
        # Present but empty is meaningful: the newest page.
        arguments["before"] = values["before"].strip()
    requested = None
    if values.get("max", "").strip():
        text = values["max"].strip()
        if not text.isdigit() or len(text) > 9:
            raise BadRequest(f"max: {values['max']!r} is not a whole number")
        requested = int(text)
    arguments["max"] = pageSize(requested)
    return ArchiveQuery(**arguments)


def historyItem(entry: ArchiveEntry, domain: str) -> dict[str, Any]:
    """
    One archived message as C{GET /me/history} shows it: the payload of the JSON dialect's
    message frame (so a web client reads history and live messages alike), with the archive
    id as C{id} (and C{stanza_id}), the sender's own id as C{message_id}, when it was routed
    (C{stamp}, and C{delay} as the dialect shows archived messages), C{direction} and C{with}.
    """
    payload = jsonstanza.toFrame(archivedMessage(entry, domain))["payload"]
    when = formatTimestamp(entry.stamp)
    item: dict[str, Any] = {"id": entry.id, "stamp": when}
    for key, value in payload.items():
        item["message_id" if key == "id" else key] = value
    if "delay" not in item:
        # An older stamp the message carried (XEP-0203: the first one counts) is kept.
        item["delay"] = {"stamp": when, "from": domain}
    item["stanza_id"] = entry.id
    item["direction"] = "out" if entry.outgoing else "in"
    item["with"] = entry.withJID
    return item



def _allowedMethods(operations: dict[str, Operation]) -> list[str]:
    """What the C{Allow} header lists: the path's methods, C{HEAD} with C{GET}, and C{OPTIONS}."""
    methods = set(operations) | {"OPTIONS"}
    if "GET" in methods:
        methods.add("HEAD")
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [m for m in order if m in methods]


def _jsonMediaType(contentType: str) -> bool:
    """Whether a Content-Type header names JSON in UTF-8 (with or without a charset)."""
    mediaType, _, params = contentType.partition(";")
    mediaType = mediaType.strip().lower()
    if mediaType != "application/json" and not (
        mediaType.startswith("application/") and mediaType.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _checkUnicode(value: Any) -> None:
    """Refuse lone surrogates (C{"\\ud800"} is valid JSON but not storable text)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("malformed JSON: a string holds an unpaired surrogate") from None
    elif isinstance(value, list):
        for item in value:
            _checkUnicode(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _checkUnicode(key)
            _checkUnicode(item)


#: Characters XML 1.0 cannot carry (lone surrogates are refused earlier, as malformed JSON).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _refuseConstant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parseJSON(raw: bytes) -> Any:
    """
    Parse a request body as JSON.

    @raise BadRequest: empty, not UTF-8, not JSON (C{NaN} and C{Infinity} included), or holding
        an unpaired surrogate.
    """
    if not raw.strip():
        raise BadRequest("malformed JSON: the body is empty")
    try:
        body = json.loads(raw.decode("utf-8-sig"), parse_constant=_refuseConstant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadRequest(f"malformed JSON: {e}") from None
    _checkUnicode(body)
    return body


def _stringFields(body: Any, names: tuple[str, ...]) -> list[str]:
    """
    The named string fields of a JSON object body.

    @raise BadRequest: the body is not an object, or a field is missing or not a string.
    """
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    problems = []
    for name in names:
        if name not in body:
            problems.append(f"{name!r} is missing")
        elif not isinstance(body[name], str):
            problems.append(f"{name!r} must be a string")
    if problems:
        raise BadRequest("; ".join(problems))
    return [body[name] for name in names]


class RestResource(resource.Resource):
    """
    Every REST endpoint, as one leaf resource: routes by path and method (L{OPERATIONS}),
    reads JSON, authenticates tokens and writes JSON, successes and errors alike.

    Handlers are coroutines run with L{defer.Deferred.fromCoroutine}; L{render} returns
    C{NOT_DONE_YET} and the answer is written when the handler finishes, unless the client has
    gone away in the meantime.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, config: Config, accounts: Accounts, im: Any, reactor: Any):
        super().__init__()
        self.config = config
        self.accounts = accounts
        self.store = accounts.store
        self.im = im
        self.reactor = reactor
        self._openAPI: dict[str, Any] | None = None

    # -- plumbing -----------------------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))
        d = defer.Deferred.fromCoroutine(self._serve(request, finished))
        d.addErrback(self._lastResort, request)
        return server.NOT_DONE_YET

    def _lastResort(self, reason: Failure, request: server.Request) -> None:
        # _serve catches everything; this only runs if writing the answer itself failed.
        self.log.failure("Could not answer {method} {uri}", reason,
                         method=request.method, uri=request.uri)

    async def _serve(self, request: server.Request, finished: list[bool]) -> None:
        try:
            reply = await self._dispatch(request)
        except Exception:  # noqa: BLE001 - every failure is answered
            failure = Failure()
            status, body, headers = errorResponse(failure)
            if status >= 500 and not isinstance(failure.value, XMPPJSONError):
                self.log.failure("Unexpected error in {method} {uri}", failure,
                                 method=request.method, uri=request.uri)
            reply = Reply(status, body, headers)
        if finished:
            self.log.debug("Client went away before {method} {uri} was answered",
                           method=request.method, uri=request.uri)
            return
        self._write(request, reply)

    def _write(self, request: server.Request, reply: Reply) -> None:
        request.setResponseCode(reply.status)
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        request.setHeader(b"Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        for name, value in reply.headers.items():
            request.setHeader(name.encode("ascii"), value.encode("utf-8"))
        if reply.body is None:
            request.setHeader(b"Content-Length", b"0")
        else:
            data = json.dumps(reply.body, ensure_ascii=False).encode("utf-8")
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
            request.write(data)
        request.finish()

    def _segments(self, request: server.Request) -> tuple[str, ...]:
        path = request.path.split(b"?", 1)[0]
        parts = path.split(b"/")[1:]
        if len(parts) > 1 and parts[-1] == b"":
            parts = parts[:-1]  # one trailing slash is tolerated
        try:
            return tuple(unquote(p.decode("ascii"), errors="strict") for p in parts)
        except UnicodeError:
            raise NotFound("no such resource") from None

    def _route(
        self, segments: tuple[str, ...]
    ) -> tuple[dict[str, Operation], dict[str, str]]:
        """The operations on the path, by method, and the path parameters."""
        found: dict[str, Operation] = {}
        params: dict[str, str] = {}
        for op in OPERATIONS:
            pattern = op.segments
            if len(pattern) != len(segments):
                continue
            candidate: dict[str, str] = {}
            for want, got in zip(pattern, segments):
                if want.startswith("{"):
                    if not got:
                        break
                    candidate[want[1:-1]] = got
                elif want != got:
                    break
            else:
                found[op.method] = op
                params = candidate
        return found, params

    async def _dispatch(self, request: server.Request) -> Reply:
        method = request.method.decode("ascii", "replace").upper()
        operations, params = self._route(self._segments(request))
        if not operations:
            raise NotFound("no such resource")
        allowed = _allowedMethods(operations)
        if method == "OPTIONS":
            return Reply(204, None, {
                "Allow": ", ".join(allowed),
                "Access-Control-Allow-Methods": ", ".join(allowed),
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE,
            })
        op = operations.get("GET" if method == "HEAD" else method)
        if op is None:
            raise MethodNotAllowed(method, allowed)
        # Cheapest checks first: the body's size and type (413, 415), then the token (401),
        # then the body's syntax (400), then what the handler checks (403, 404, 409, 422).
        raw = self._rawBody(request) if op.body is not None else None
        localpart = await self._authenticate(request) if op.auth else None
        body = _parseJSON(raw) if raw is not None else None
        handler = getattr(self, op.handler)
        return await handler(request, params, body, localpart)

    def _rawBody(self, request: server.Request) -> bytes:
        """
        The request's body, checked for size and media type.

        @raise PayloadTooLarge: over C{config.maxHTTPBody} bytes.
        @raise UnsupportedMediaType: a Content-Type other than JSON in UTF-8 (none is fine).
        """
        limit = self.config.maxHTTPBody
        too = PayloadTooLarge(f"the body is larger than {limit} bytes")
        if getattr(request, "bodyTooLarge", False):
            raise too
        declared = request.getHeader(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise too
        content = request.content
        raw = b""
        if content is not None:
            content.seek(0)
            raw = content.read(limit + 1)
        if len(raw) > limit:
            raise too
        contentType = request.getHeader(b"content-type")
        if contentType is not None and not _jsonMediaType(contentType.decode("latin-1")):
            raise UnsupportedMediaType(
                "send the body as application/json (UTF-8), not "
                + contentType.decode("latin-1")
            )
        return raw

    async def _authenticate(self, request: server.Request) -> str:
        """
        The localpart owning the request's token (C{Authorization: Bearer} or C{?token=}).

        @raise BadToken: no token, or an unknown or expired one.
        """
        token = None
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, value = header.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise BadToken("use Authorization: Bearer TOKEN")
            token = value.strip()
        else:
            args: dict[bytes, list[bytes]] = request.args or {}
            values = args.get(b"token")
            if values:
                token = values[0].decode("latin-1")
        if not token:
            raise BadToken("a token is required (Authorization: Bearer TOKEN or ?token=TOKEN)")
        localpart = await self.accounts.authenticateToken(token)
        if localpart is None:
            raise BadToken("the token is unknown or has expired")
        return localpart

    def _address(self, request: server.Request) -> str | None:
        return clientAddress(request, self.config.trustedProxies)

    def _token(self, request: server.Request) -> str:
        header = request.getHeader(b"authorization")
        if header is not None:
            return header.decode("latin-1").strip().partition(" ")[2].strip()
        args: dict[bytes, list[bytes]] = request.args or {}
        return args[b"token"][0].decode("latin-1")

    def _targetOf(self, params: dict[str, str]) -> str | None:
        """The normalised localpart named in the path, or C{None} if it is not a valid one."""
        try:
            return self.accounts.localpartOf(params["localpart"])
        except Unprocessable:
            return None

    async def _profile(self, localpart: str) -> dict[str, Any]:
        profile = await self.store.getProfile(localpart)
        if profile is None:
            raise NotFound(f"no user {localpart!r}")
        return profile

    # -- handlers -----------------------------------------------------------------------

    async def getUser(
        self, request: server.Request, params: dict[str, str], body: None, localpart: None
    ) -> Reply:
        target = self._targetOf(params)
        if target is None or not await self.store.userExists(target):
            raise NotFound(f"no user {params['localpart']!r}")
        return Reply(200, {"jid": self.accounts.bareJID(target)})

    async def postUsers(
        self, request: server.Request, params: dict[str, str], body: Any, localpart: None
    ) -> Reply:
        jid, password = _stringFields(body, ("jid", "password"))
        registered = await self.accounts.register(jid, password, address=self._address(request))
        return Reply(201, {"jid": self.accounts.bareJID(registered)})

    async def postLogin(
        self, request: server.Request, params: dict[str, str], body: Any, localpart: None
    ) -> Reply:
        jid, password = _stringFields(body, ("jid", "password"))
        token, user = await self.accounts.login(jid, password, address=self._address(request))
        profile = await self._profile(user)
        reply: dict[str, Any] = {"token": token}
        # "szymon@localhost/" with its trailing slash, as the original API sent it.
        reply.update(profileBody(self.accounts.bareJID(user) + "/", profile))
        return Reply(200, reply)

    async def postLogout(
        self, request: server.Request, params: dict[str, str], body: None, localpart: str
    ) -> Reply:
        await self.accounts.revokeToken(self._token(request))
        return Reply(204)

    async def getMe(
        self, request: server.Request, params: dict[str, str], body: None, localpart: str
    ) -> Reply:
        profile = await self._profile(localpart)
        return Reply(200, profileBody(self.accounts.bareJID(localpart), profile))

    async def patchMe(
        self, request: server.Request, params: dict[str, str], body: Any, localpart: str
    ) -> Reply:
        return await self._updateProfile(localpart, body)

    async def patchUser(
        self, request: server.Request, params: dict[str, str], body: Any, localpart: str
    ) -> Reply:
        if self._targetOf(params) != localpart:
            raise Forbidden("you may only change your own profile")
        return await self._updateProfile(localpart, body)

    async def _updateProfile(self, localpart: str, body: Any) -> Reply:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        errors = []
        for key, value in body.items():
            if key not in PROFILE_FIELDS:
                message = ("is read-only" if key in LOGIN_KEYS else "is not a profile field")
                errors.append({"field": key, "message": message})
            elif value is not None and not isinstance(value, str):
                errors.append({"field": key, "message": "must be a string or null"})
            elif value is not None and len(value) > self._maxLength(key):
                errors.append(
                    {"field": key, "message": f"longer than {self._maxLength(key)} characters"}
                )
            elif value is not None and _NOT_XML.search(value):
                # The profile is also the user's vCard on the XMPP door: a NUL or another
                # control character would make that stream unreadable (and PostgreSQL
                # refuses NUL in text).
                errors.append({"field": key, "message": "contains a character XML cannot carry"})
        if errors:
            raise Unprocessable(errors)
        if body:
            await self.store.updateProfile(localpart, dict(body))
        profile = await self._profile(localpart)
        if "avatar" in body:
            # The profile is the user's vCard: contacts learn of a new avatar from presence.
            await self.im.profileChanged(localpart, profile)
        return Reply(200, profileBody(self.accounts.bareJID(localpart), profile))

    def _maxLength(self, field: str) -> int:
        """Profile values are short texts; the avatar is a data: URL as large as a vCard photo."""
        if field == "avatar":
            return max(MAX_PROFILE_VALUE, self.config.maxAvatarSize + 256)
        return MAX_PROFILE_VALUE

    async def postPassword(
        self, request: server.Request, params: dict[str, str], body: Any, localpart: str
    ) -> Reply:
        new, old = _stringFields(body, ("password", "old_password"))
        # A stolen token must not become a way to guess the password: same throttle as logins.
        address = self._address(request)
        self.accounts.checkLoginAllowed(localpart, address)
        if not await self.accounts.checkPassword(localpart, old):
            self.accounts.loginFailed(localpart, address)
            raise Forbidden("old_password is wrong")
        await self.accounts.changePassword(localpart, new)
        return Reply(204)

    async def getRoster(
        self, request: server.Request, params: dict[str, str], body: None, localpart: str
    ) -> Reply:
        items = await self.store.getRoster(localpart)
        return Reply(200, {"items": [
            {
                "jid": item.jid,
                "name": item.name,
                "subscription": item.subscription,
                "ask": "subscribe" if item.askOut else None,
                "groups": list(item.groups),
            }
            for item in items
            if item.inRoster
        ]})

    async def getHistory(
        self, request: server.Request, params: dict[str, str], body: None, localpart: str
    ) -> Reply:
        archiver = getattr(self.im, "archive", None)
        if archiver is not None and not archiver.enabled:
            raise XMPPJSONError("this server keeps no message history",
                                condition="feature-not-implemented")
        query = _historyQuery(request)
        if archiver is not None:
            page = await archiver.query(localpart, query)
        else:
            page = await self.store.queryArchive(localpart, query)
        return Reply(200, {
            "messages": list(readable(
                page.entries, lambda entry: historyItem(entry, self.config.domain), self.log)),
            "first": page.entries[0].id if page.entries else None,
            "last": page.entries[-1].id if page.entries else None,
            "complete": page.complete,
            "count": page.count,
        })

    async def getHealth(
        self, request: server.Request, params: dict[str, str], body: None, localpart: None
    ) -> Reply:
        try:
            d = defer.maybeDeferred(self.store.ping)
            d.addTimeout(HEALTH_TIMEOUT, self.reactor)
            await d
        except Exception as e:  # noqa: BLE001 - any failure means unavailable
            error = e if isinstance(e, XMPPJSONError) else StoreUnavailable()
            self.log.warn(  # noqa: G010 - twisted.logger API
                "Health check: the database is unavailable: {error!r}", error=e)
            answer: dict[str, Any] = {"status": "unavailable", "store": "unavailable"}
            answer.update(error.toJSON())
            answer["error"] = "service-unavailable"
            return Reply(503, answer, {"Retry-After": str(RETRY_AFTER)})
        return Reply(200, {"status": "ok", "store": "ok"})

    async def getOpenAPI(
        self, request: server.Request, params: dict[str, str], body: None, localpart: None
    ) -> Reply:
        if self._openAPI is None:
            self._openAPI = openAPI(self.config.domain)
        return Reply(200, self._openAPI)


# -- OpenAPI ---------------------------------------------------------------------------------

_PROFILE_PROPERTIES: dict[str, Any] = {
    key: {"type": ["string", "null"]} for key in LOGIN_KEYS[1:]
}
_PROFILE_PROPERTIES["last_seen"] = {
    "type": ["string", "null"],
    "description": "last presence change, ISO 8601 UTC with microseconds and Z",
    "example": "2018-01-27T11:11:11.508393Z",
}
_PROFILE_PROPERTIES["presence"] = {
    "type": "string",
    "description": "live presence: a show value, 'unavailable', or '' if never seen",
}
_PROFILE_PROPERTIES["status"] = {"type": "string", "description": "status text, '' if none"}

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "description"],
    "properties": {
        "error": {"type": "string", "description": "an XMPP-style error condition",
                  "example": "item-not-found"},
        "description": {"type": "string"},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": _ERROR_SCHEMA,
    "ValidationError": {
        "allOf": [
            {"$ref": "#/components/schemas/Error"},
            {
                "type": "object",
                "required": ["errors"],
                "properties": {
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {"field": {"type": "string"},
                                           "message": {"type": "string"}},
                        },
                    }
                },
            },
        ]
    },
    "Jid": {
        "type": "object",
        "required": ["jid"],
        "properties": {"jid": {"type": "string", "example": "szymon@localhost"}},
    },
    "Login": {
        "type": "object",
        "description": "Keys in exactly this order, as the original web API sent them.",
        "required": ["token", *LOGIN_KEYS],
        "properties": {
            "token": {"type": "string", "description": "48 URL-safe characters"},
            "jid": {"type": "string", "example": "szymon@localhost/",
                    "description": "the bare JID followed by '/' (kept from the original API)"},
            **_PROFILE_PROPERTIES,
        },
    },
    "Profile": {
        "type": "object",
        "required": list(LOGIN_KEYS),
        "properties": {
            "jid": {"type": "string", "example": "szymon@localhost"},
            **_PROFILE_PROPERTIES,
        },
    },
    "Roster": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "jid": {"type": "string"},
                        "name": {"type": ["string", "null"]},
                        "subscription": {"enum": ["none", "to", "from", "both"]},
                        "ask": {"type": ["string", "null"], "enum": ["subscribe", None]},
                        "groups": {"type": "array", "items": {"type": "string"}},
                    },
                },
            }
        },
    },
    "History": {
        "type": "object",
        "required": ["messages", "first", "last", "complete", "count"],
        "properties": {
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/HistoryMessage"}},
            "first": {"type": ["string", "null"], "description": "id of the first message here"},
            "last": {"type": ["string", "null"], "description": "id of the last message here"},
            "complete": {
                "type": "boolean",
                "description": "the page reaches the end in its direction: the newest message "
                               "when paging forwards, the oldest when paging backwards",
            },
            "count": {"type": "integer", "description": "messages matching the filters, "
                                                        "all pages together"},
        },
    },
    "HistoryMessage": {
        "type": "object",
        "description": "An archived message: the keys of a message frame of the JSON dialect "
                       "(docs/json-dialect.md), except that `id` is the archive id (the "
                       "stanza_id) and the message's own id is `message_id`.",
        "required": ["id", "stamp", "from", "to", "type", "body", "message_id", "delay",
                     "stanza_id", "direction", "with"],
        "properties": {
            "id": {"type": "string", "description": "archive id, the XEP-0359 stanza-id"},
            "stamp": {"type": "string", "description": "when the server routed it, ISO 8601 UTC"},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "type": {"enum": ["chat", "normal"]},
            "body": {"type": "string"},
            "message_id": {"type": "string", "description": "the sender's id, '' if none"},
            "delay": {"type": "object", "properties": {"stamp": {"type": "string"},
                                                       "from": {"type": ["string", "null"]}}},
            "stanza_id": {"type": "string", "description": "the same as id"},
            "direction": {"enum": ["in", "out"]},
            "with": {"type": "string", "description": "bare JID of the other party"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "store"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "store": {"enum": ["ok", "unavailable"]},
            "error": {"type": "string"},
            "description": {"type": "string"},
        },
    },
}

_COMMON_ERRORS: dict[int, str] = {
    400: "malformed JSON, or a field missing or of the wrong type",
    401: "no token, or an unknown or expired one",
    413: "the body is too large",
    415: "the body is not application/json",
    500: "internal server error (details are only logged)",
    503: "the database is unavailable; retry after Retry-After seconds",
}


def openAPI(domain: str = "localhost") -> dict[str, Any]:
    """
    The OpenAPI 3.1 description of every endpoint, built from L{OPERATIONS}.
    """
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        statuses: dict[int, tuple[str, str | None]] = dict(op.responses)
        extra = [500]
        if op.body is not None:
            extra[:0] = [400, 413, 415]
        if op.auth:
            extra.append(401)
        if op.handler not in ("getOpenAPI", "getHealth"):
            extra.append(503)
        for status in extra:
            statuses.setdefault(status, (_COMMON_ERRORS[status], "Error"))
        for status in sorted(statuses):
            description, schema = statuses[status]
            entry: dict[str, Any] = {"description": description}
            if schema is not None:
                entry["content"] = {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                }
            responses[str(status)] = entry
        operation: dict[str, Any] = {
            "operationId": op.handler,
            "summary": op.summary,
            "responses": responses,
        }
        if op.description:
            operation["description"] = op.description
        if "{localpart}" in op.path:
            operation["parameters"] = [{
                "name": "localpart",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": f"a localpart, or a bare JID of {domain}",
            }]
        if op.query:
            operation.setdefault("parameters", []).extend(dict(p) for p in op.query)
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": op.body}},
            }
        if op.auth:
            operation["security"] = [{"bearer": []}, {"queryToken": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "xmppjson REST API",
            "version": __version__,
            "description": (
                "REST API of xmppjson.  Every error is JSON: "
                '{"error": "<condition>", "description": "..."}.  '
                "The JSON WebSocket dialect is at /stream?token=TOKEN (see docs/json-dialect.md)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "queryToken": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }


def main() -> None:
    """C{python -m xmppjson.rest}: print the OpenAPI document (C{docs/openapi.json})."""
    import sys

    sys.stdout.write(json.dumps(openAPI(), indent=2, ensure_ascii=False) + "\n")


# -- the HTTP request with a bounded body ----------------------------------------------------


#: Seconds a client has, from the end of its request line, to send the rest of the request
#: (headers and body).  The channel's idle timeout restarts with every byte, so without this
#: a client sending one byte a minute would hold a connection for hours ("slow loris").
#: A site may set its own as C{requestTimeout}.
REQUEST_TIMEOUT = 30.0

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class BoundedRequest(server.Request):
    """
    A request bounded in size and in time: it stops buffering its body past the site's
    C{maxBody} bytes, so that a huge upload costs no memory (L{RestResource} then answers
    413), and a request not fully received L{REQUEST_TIMEOUT} seconds after its first line is
    answered 408 and its connection closed.

    @ivar bodyTooLarge: set once the body exceeded the limit.
    """

    bodyTooLarge = False
    _received = 0
    _deadline: Any = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any):
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        timeout = getattr(site, "requestTimeout", REQUEST_TIMEOUT)
        callLater = getattr(channel, "callLater", None)
        if timeout and callLater is not None:
            self._deadline = callLater(timeout, self._tooSlow)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # Everything has arrived: from here the resource decides how long the answer takes.
        self._cancelDeadline()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        self._cancelDeadline()
        super().connectionLost(reason)

    def _tooSlow(self) -> None:
        self._deadline = None
        channel = self.channel
        transport = getattr(channel, "transport", None)
        if transport is None:
            return
        body = json.dumps({
            "error": "request-timeout",
            "description": "the request was not received in time",
        }).encode("utf-8")
        transport.write(_TIMED_OUT % (len(body), body))
        transport.loseConnection()

    def _limit(self) -> int | None:
        site = getattr(self.channel, "site", None)
        return getattr(site, "maxBody", None)

    def gotLength(self, length: int | None) -> None:
        limit = self._limit()
        if limit is not None and length is not None and length > limit:
            self.bodyTooLarge = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.bodyTooLarge:
            return
        self._received += len(data)
        limit = self._limit()
        if limit is not None and self._received > limit:
            self.bodyTooLarge = True
            if self.content is not None:
                self.content.seek(0)
                self.content.truncate()
            return
        super().handleContentChunk(data)


# Keep the module's public names explicit.
__all__ = [
    "LOGIN_KEYS",
    "OPERATIONS",
    "BoundedRequest",
    "RestResource",
    "clientAddress",
    "errorResponse",
    "formatTimestamp",
    "openAPI",
    "profileBody",
]


if __name__ == "__main__":
    main()
