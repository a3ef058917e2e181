"""
SASL mechanisms of the XMPP door (RFC 6120 section 6): SCRAM-SHA-256 and SCRAM-SHA-1 (RFC 5802,
RFC 7677, through C{scramp}) and PLAIN (RFC 4616).

A mechanism is a small state machine over bytes: L{SASLMechanism.start} gets the initial response
(or C{None} when the client sent none), L{SASLMechanism.respond} each later response, and each
returns a L{Challenge} or a L{Success}, or raises L{SASLFailure} with an RFC 6120 failure
condition.  The stream (L{xmppjson.c2s.stream}) does the base64 and the XML.  Nothing a client
sends can make a mechanism raise anything but L{SASLFailure}.

Passwords are only ever checked by L{xmppjson.accounts.Accounts}: PLAIN asks
C{checkPassword}, SCRAM fetches the stored keys with C{getScramKeys} and never sees a password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scramp import ScramException
from scramp import ScramMechanism as _ScrampMechanism
from scramp.core import IterationCount, Salt
from scramp.utils import ServerError, saslprep
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID, InvalidFormat

from xmppjson.error import StoreUnavailable, Unprocessable
from xmppjson.storage import ScramKeys

#: Offered in this order (the strongest first, RFC 6120 section 6.3.3 leaves order to us and
#: clients pick the first they support).
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")

_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-1": hashlib.sha1}

# scramp's error -> the RFC 6120 failure condition shown to the client.  Anything that means
# "the credentials are wrong" is not-authorized; anything that means "your message is broken"
# is malformed-request.
_SCRAM_CONDITIONS = {
    ServerError.INVALID_PROOF: "not-authorized",
    ServerError.UNKNOWN_USER: "not-authorized",
    ServerError.CHANNEL_BINDINGS_DONT_MATCH: "not-authorized",
    ServerError.NO_RESOURCES: "temporary-auth-failure",
}


@dataclass
class Challenge:
    """Send C{<challenge/>} with these bytes and wait for a C{<response/>}."""

    data: bytes


@dataclass
class Success:
    """
    The client is C{localpart}; send C{<success/>} carrying C{data} (additional data with
    success, RFC 6120 section 6.3.10) if it is not C{None}.
    """

    localpart: str
    data: bytes | None = None


class SASLFailure(Exception):
    """
    The exchange failed with an RFC 6120 section 6.5 condition (C{not-authorized},
    C{malformed-request}, C{invalid-authzid}, C{temporary-auth-failure}, ...).

    @ivar condition: the failure condition element name.
    @ivar text: an explanation for the client, or C{None}.  Never says whether the user exists.
    """

    def __init__(self, condition: str, text: str | None = None):
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


class SASLMechanism:
    """
    One SASL exchange.  A new instance for every C{<auth/>}.

    @cvar name: the IANA mechanism name.
    """

    name = ""
    log = Logger()
    #: The (normalised) account the client tries to log in to, once the mechanism knows it:
    #: failed attempts are counted against it.
    account: str | None = None
    #: Called with that account before its credentials are checked; raises L{SASLFailure}
    #: (C{temporary-auth-failure}) to refuse an account that is being guessed at.
    gate: Callable[[str], None] | None = None

    def _admit(self, localpart: str) -> None:
        self.account = localpart
        if self.gate is not None:
            self.gate(localpart)

    async def start(self, initial: bytes | None) -> Challenge | Success:
        """The C{<auth/>} element arrived, with its decoded initial response or C{None}."""
        raise NotImplementedError

    async def respond(self, data: bytes) -> Challenge | Success:
        """A C{<response/>} arrived, decoded."""
        raise NotImplementedError


def _localpartOf(accounts: Any, domain: str, username: str) -> str | None:
    """
    The normalised localpart for an authentication identity, or C{None} when it cannot name an
    account here.  A bare JID of our domain is accepted too, because some clients send what the
    user typed.
    """
    if "@" in username:
        try:
            parsed = JID(username)
        except (InvalidFormat, UnicodeError):
            return None
        if parsed.host != domain or not parsed.user or parsed.resource:
            return None
        username = parsed.user
    try:
        return accounts.nodeprep(username)
    except Unprocessable:
        return None


class PlainMechanism(SASLMechanism):
    """
    SASL PLAIN (RFC 4616): C{[authzid] NUL authcid NUL passwd} in one message.  The stream only
    offers it over TLS or with C{--allow-plaintext}.
    """

    name = "PLAIN"

    def __init__(self, accounts: Any, domain: str):
        self.accounts = accounts
        self.domain = domain
        self._started = False

    async def start(self, initial: bytes | None) -> Challenge | Success:
        self._started = True
        if initial is None:
            # No initial response: an empty challenge asks for it (RFC 6120 section 6.4.2).
            return Challenge(b"")
        return await self._check(initial)

    async def respond(self, data: bytes) -> Challenge | Success:
        return await self._check(data)

    async def _check(self, message: bytes) -> Success:
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request", "PLAIN message is not UTF-8") from None
        parts = text.split("\x00")
        if len(parts) != 3:
            raise SASLFailure(
                "malformed-request", "PLAIN message must be authzid NUL authcid NUL password"
            )
        authzid, authcid, password = parts
        if not authcid or not password:
            raise SASLFailure("not-authorized")
        localpart = _localpartOf(self.accounts, self.domain, authcid)
        if localpart is None:
            raise SASLFailure("not-authorized")
        self._admit(localpart)
        try:
            ok = await self.accounts.checkPassword(localpart, password)
        except StoreUnavailable:
            raise SASLFailure("temporary-auth-failure", "try again later") from None
        if not ok:
            raise SASLFailure("not-authorized")
        if authzid and not _authzidAllowed(authzid, localpart, self.domain):
            raise SASLFailure("invalid-authzid", "you may only act as yourself")
        return Success(localpart)


def _authzidAllowed(authzid: str, localpart: str, domain: str) -> bool:
    """An authorization identity is only acceptable when it is the user's own bare JID."""
    try:
        wanted = JID(authzid)
    except (InvalidFormat, UnicodeError):
        return False
    return (
        wanted.resource is None
        and wanted.userhost() == JID(tuple=(localpart, domain, None)).userhost()
    )


def _decodeSaslname(value: str) -> str:
    """
    Undo RFC 5802's escaping of a C{saslname}: C{=2C} is a comma and C{=3D} an equals sign; any
    other C{=} is malformed.
    """
    parts = value.split("=")
    out = [parts[0]]
    for part in parts[1:]:
        if part.startswith("2C"):
            out.append("," + part[2:])
        elif part.startswith("3D"):
            out.append("=" + part[2:])
        else:
            raise SASLFailure("malformed-request", "bad escaping in the SCRAM username")
    return "".join(out)


def parseScramUsername(clientFirst: str) -> str:
    """
    The (escaped-decoded, SASLprep'ed) username of a SCRAM client-first-message
    (C{gs2-header client-first-message-bare}, e.g. C{n,,n=juliet,r=abc}).

    scramp only learns the user through a synchronous callback, but our keys come from the
    database, so the stream reads the username first, fetches the keys, then runs scramp.

    @raise SASLFailure: C{malformed-request} for anything that is not a client-first-message.
    """
    pieces = clientFirst.split(",", 2)
    if len(pieces) != 3:
        raise SASLFailure("malformed-request", "not a SCRAM client-first-message")
    bare = pieces[2]
    attributes = bare.split(",")
    if not attributes[0].startswith("n=") or len(attributes) < 2:
        raise SASLFailure("malformed-request", "the SCRAM message must start with n=...,r=...")
    username = _decodeSaslname(attributes[0][2:])
    try:
        prepared = saslprep(username)
    except ScramException:
        raise SASLFailure("malformed-request", "the SCRAM username is not allowed") from None
    if not prepared:
        raise SASLFailure("malformed-request", "empty SCRAM username")
    return prepared


class ScramServerMechanism(SASLMechanism):
    """
    SCRAM-SHA-256 or SCRAM-SHA-1 without channel binding (the C{-PLUS} variants are not
    offered), as a server: client-first, server-first (challenge), client-final, server-final
    (carried by C{<success/>}).

    An unknown user goes through the same exchange with made-up keys (a salt derived from the
    username with a server secret, so that asking twice gives the same salt, as for a real
    user) and fails only at the end with C{not-authorized}, exactly as a wrong password does:
    the exchange tells nothing about which users exist.
    """

    def __init__(self, name: str, accounts: Any, domain: str, secret: bytes, iterations: int):
        if name not in _HASHES:
            raise ValueError(f"unsupported SCRAM mechanism {name!r}")
        self.name = name
        self.accounts = accounts
        self.domain = domain
        self.secret = secret
        self.iterations = iterations
        self._server: Any = None
        self._localpart: str | None = None
        self._known = False
        self._done = False

    def _dummyKeys(self, username: str) -> ScramKeys:
        digest = _HASHES[self.name]
        salt = hmac.new(self.secret, f"{self.name}\x00{username}".encode(), hashlib.sha256).digest()
        size = digest().digest_size
        return ScramKeys(
            salt=salt[:16],
            iterations=self.iterations,
            storedKey=secrets.token_bytes(size),
            serverKey=secrets.token_bytes(size),
        )

    async def start(self, initial: bytes | None) -> Challenge | Success:
        if initial is None or initial == b"":
            # SCRAM is client-first: ask for the client-first-message.
            return Challenge(b"")
        return await self._clientFirst(initial)

    async def respond(self, data: bytes) -> Challenge | Success:
        if self._server is None:
            return await self._clientFirst(data)
        return self._clientFinal(data)

    async def _clientFirst(self, data: bytes) -> Challenge:
        try:
            clientFirst = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request", "SCRAM message is not UTF-8") from None
        username = parseScramUsername(clientFirst)
        localpart = _localpartOf(self.accounts, self.domain, username)
        keys: ScramKeys | None = None
        if localpart is not None:
            self._admit(localpart)
            try:
                keys = await self.accounts.getScramKeys(localpart, self.name)
            except StoreUnavailable:
                raise SASLFailure("temporary-auth-failure", "try again later") from None
        self._known = keys is not None
        self._localpart = localpart
        if keys is None:
            keys = self._dummyKeys(username)
        try:
            prefetched = (
                Salt(keys.salt),
                keys.storedKey,
                keys.serverKey,
                _iterationCount(keys.iterations),
            )
        except ScramException:
            self.log.error("Unusable stored SCRAM keys for {user}", user=localpart)
            raise SASLFailure("temporary-auth-failure") from None
        server = _ScrampMechanism(self.name).make_server(lambda _username: None)
        # scramp asks for the keys through a synchronous callback; ours were fetched above.
        server.auth_fn = lambda _username: prefetched
        try:
            server.set_client_first(clientFirst)
            serverFirst = server.get_server_first()
        except ScramException as e:
            raise _scramFailure(e) from None
        self._server = server
        return Challenge(serverFirst.encode("utf-8"))

    def _clientFinal(self, data: bytes) -> Success:
        if self._done:
            raise SASLFailure("malformed-request", "the SCRAM exchange is over")
        self._done = True
        try:
            clientFinal = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request", "SCRAM message is not UTF-8") from None
        try:
            self._server.set_client_final(clientFinal)
            serverFinal = self._server.get_server_final()
        except ScramException as e:
            raise _scramFailure(e) from None
        if not self._known or self._localpart is None:
            # Unreachable with random dummy keys, but never rely on luck for authentication.
            raise SASLFailure("not-authorized")
        return Success(self._localpart, serverFinal.encode("utf-8"))


def _iterationCount(count: int) -> IterationCount:
    """
    scramp's iteration count object for C{count}.  scramp refuses counts below 4096 (RFC 7677's
    recommendation), but the count is the one the keys were derived with: refusing it would
    lock the user out, so a lower count configured by the operator (or by tests) is kept.
    """
    try:
        return IterationCount(count)
    except ScramException:
        if not isinstance(count, int) or count < 1:
            raise
        lowered = object.__new__(IterationCount)
        lowered.value = count
        return lowered


def _scramFailure(e: ScramException) -> SASLFailure:
    condition = _SCRAM_CONDITIONS.get(e.server_error, "malformed-request")  # type: ignore[arg-type]
    if condition == "malformed-request":
        return SASLFailure(condition, "malformed SCRAM message")
    return SASLFailure(condition)


def offeredMechanisms(secure: bool, allowPlaintext: bool) -> list[str]:
    """
    The mechanism names to advertise: SCRAM always, PLAIN only when the password cannot be
    read off the wire (TLS) or the operator allowed it (C{--allow-plaintext}).
    """
    names = list(SCRAM_MECHANISMS)
    if secure or allowPlaintext:
        names.append("PLAIN")
    return names


def makeMechanism(
    name: str,
    accounts: Any,
    domain: str,
    secret: bytes,
    iterations: int,
    gate: Callable[[str], None] | None = None,
) -> SASLMechanism:
    """
    A fresh mechanism for one exchange.  C{name} must be one of L{offeredMechanisms}.

    @param gate: see L{SASLMechanism.gate}.
    """
    mechanism: SASLMechanism
    if name == "PLAIN":
        mechanism = PlainMechanism(accounts, domain)
    else:
        mechanism = ScramServerMechanism(name, accounts, domain, secret, iterations)
    mechanism.gate = gate
    return mechanism
