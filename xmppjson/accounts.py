"""
Accounts: registration, password checks (SASL PLAIN, SCRAM, REST login), login tokens.

Every door checks passwords and tokens here and nowhere else.  Passwords are SASLprep'ed
(RFC 4013) and stored only as SCRAM keys (L{xmppjson.scram}); login tokens are random and stored
only as their SHA-256.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from scramp.utils import ScramException, saslprep
from twisted.internet import threads
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from xmppjson import scram
from xmppjson.config import Config
from xmppjson.error import Forbidden, NotAuthorized, Unprocessable
from xmppjson.storage import Credentials, ScramKeys

_T = TypeVar("_T")

#: The longest localpart, in UTF-8 bytes (RFC 7622 section 3.3.1).
MAX_LOCALPART_BYTES = 1023

#: The longest password accepted, in characters (after SASLprep).  PBKDF2 cost does not grow
#: with the password, but nothing sensible is longer and a limit keeps requests small.
MAX_PASSWORD_LENGTH = 1024

#: Tokens longer than this are refused without asking the store (ours are 48 characters).
MAX_TOKEN_LENGTH = 512

#: The mechanism whose keys L{Accounts.checkPassword} verifies against.
CHECK_MECHANISM = "SCRAM-SHA-256"

#: How often, at most, L{Accounts.login} sweeps expired tokens out of the store (seconds).
PURGE_INTERVAL = 3600.0


def hashToken(token: str) -> str:
    """The form in which a login token is stored: its SHA-256, in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Accounts:
    """
    The one place that knows how passwords and tokens are checked.

     - C{nodeprep(localpart) -> str}: normalise a localpart (RFC 7622 / stringprep nodeprep),
       raising L{xmppjson.error.Unprocessable} for an invalid one.
     - C{localpartOf(jidOrLocalpart) -> str}: the normalised localpart of a localpart or of a
       JID of this domain.
     - C{async register(localpart, password) -> str}: create the account (a bare JID of this
       domain is accepted too), return the normalised localpart; raises UserExists, Unprocessable, Forbidden (registration closed).
     - C{async userExists(localpart) -> bool}
     - C{async checkPassword(localpart, password) -> bool}: for SASL PLAIN and REST login.
     - C{async getScramKeys(localpart, mechanism) -> ScramKeys | None}: for SASL SCRAM.
     - C{async login(jidOrLocalpart, password) -> (token, localpart)}: raises NotAuthorized.
     - C{async authenticateToken(token) -> localpart | None}
     - C{async revokeToken(token) -> bool}
     - C{async changePassword(localpart, password) -> None}

    Store failures (L{xmppjson.error.StoreUnavailable}) pass through unchanged.

    @ivar reactor: gives the time (C{seconds()}), and, when it provides L{IReactorThreads},
        the thread pool in which PBKDF2 runs so that it never blocks the reactor.
    """

    log = Logger()

    def __init__(self, config: Config, store: Any, reactor: Any):
        self.config = config
        self.store = store
        self.reactor = reactor
        self._lastPurge: float | None = None
        self._dummyKeys: ScramKeys | None = None

    # -- names ------------------------------------------------------------------------------

    def nodeprep(self, localpart: str) -> str:
        """
        Normalise a localpart with stringprep's nodeprep profile.

        @raise Unprocessable: (field C{jid}) if it is not a string, is empty, fails nodeprep, or
            is longer than 1023 bytes once prepared.
        """
        if not isinstance(localpart, str):
            raise Unprocessable([{"field": "jid", "message": "must be a string"}])
        if not localpart:
            raise Unprocessable([{"field": "jid", "message": "must not be empty"}])
        try:
            prepared = nodeprep.prepare(localpart)
        except UnicodeError as e:
            raise Unprocessable(
                [{"field": "jid", "message": f"not a valid XMPP localpart: {e}"}]
            ) from None
        if not prepared:
            raise Unprocessable([{"field": "jid", "message": "must not be empty"}])
        if len(prepared.encode("utf-8")) > MAX_LOCALPART_BYTES:
            raise Unprocessable(
                [{"field": "jid", "message": f"longer than {MAX_LOCALPART_BYTES} bytes"}]
            )
        return prepared

    def localpartOf(self, jidOrLocalpart: str) -> str:
        """
        The normalised localpart named by a bare localpart (C{"Szymon"}) or by a JID of this
        domain (C{"szymon@localhost"}; a resource, as in the login response's
        C{"szymon@localhost/"}, is ignored).

        @raise Unprocessable: (field C{jid}) for an invalid localpart, a JID without one, or a
            JID of another domain.
        """
        if isinstance(jidOrLocalpart, str) and "@" in jidOrLocalpart:
            try:
                parsed = JID(jidOrLocalpart)
            except (InvalidFormat, UnicodeError) as e:
                raise Unprocessable(
                    [{"field": "jid", "message": f"not a valid JID: {e}"}]
                ) from None
            if parsed.host != self.config.domain:
                raise Unprocessable(
                    [{"field": "jid", "message": f"not a JID of {self.config.domain}"}]
                )
            if not parsed.user:
                raise Unprocessable([{"field": "jid", "message": "the JID has no localpart"}])
            return self.nodeprep(parsed.user)
        return self.nodeprep(jidOrLocalpart)

    def bareJID(self, localpart: str) -> str:
        """C{localpart@domain}."""
        return f"{localpart}@{self.config.domain}"

    # -- passwords --------------------------------------------------------------------------

    def preparePassword(self, password: str) -> str:
        """
        SASLprep a new password and check its length.

        @raise Unprocessable: (field C{password}) if it is not a string, fails SASLprep, is
            shorter than C{config.minPasswordLength} or longer than L{MAX_PASSWORD_LENGTH}.
        """
        if not isinstance(password, str):
            raise Unprocessable([{"field": "password", "message": "must be a string"}])
        try:
            prepared = saslprep(password)
        except ScramException as e:
            raise Unprocessable(
                [{"field": "password", "message": f"not allowed by SASLprep: {e}"}]
            ) from None
        minimum = self.config.minPasswordLength
        if len(prepared) < minimum:
            raise Unprocessable(
                [{"field": "password", "message": f"must be at least {minimum} characters"}]
            )
        if len(prepared) > MAX_PASSWORD_LENGTH:
            raise Unprocessable(
                [
                    {
                        "field": "password",
                        "message": f"must be at most {MAX_PASSWORD_LENGTH} characters",
                    }
                ]
            )
        return prepared

    async def _offload(self, f: Callable[..., _T], *args: Any) -> _T:
        """Run CPU-bound C{f} in the reactor's thread pool if it has one, else inline."""
        if IReactorThreads.providedBy(self.reactor):
            return await threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), f, *args
            )
        return f(*args)

    async def _makeCredentials(self, prepared: str) -> Credentials:
        return await self._offload(
            scram.makeCredentials, prepared, self.config.scramIterations
        )

    async def register(self, localpart: str, password: str) -> str:
        """
        Create an account.

        @param localpart: the localpart, or a bare JID of this domain.
        @return: the normalised localpart.
        @raise Forbidden: registration is closed.
        @raise Unprocessable: invalid localpart or password (every invalid field is listed).
        @raise xmppjson.storage.UserExists: the localpart is taken.
        """
        if self.config.registration != "open":
            raise Forbidden("registration is closed on this server")
        errors: list[dict[str, str]] = []
        prepared = ""
        node = ""
        try:
            node = self.localpartOf(localpart)
        except Unprocessable as e:
            errors.extend(e.errors)
        try:
            prepared = self.preparePassword(password)
        except Unprocessable as e:
            errors.extend(e.errors)
        if errors:
            raise Unprocessable(errors)
        credentials = await self._makeCredentials(prepared)
        await self.store.createUser(node, credentials)
        self.log.info("Registered {jid}", jid=self.bareJID(node))
        return node

    async def userExists(self, localpart: str) -> bool:
        """
        Whether the (not yet normalised) localpart, or bare JID of this domain, is registered;
        invalid ones are not.
        """
        try:
            node = self.localpartOf(localpart)
        except Unprocessable:
            return False
        return bool(await self.store.userExists(node))

    async def getScramKeys(self, localpart: str, mechanism: str) -> ScramKeys | None:
        """
        The stored SCRAM keys of a normalised localpart for C{mechanism}, or C{None} if the user
        or the keys do not exist.
        """
        credentials = await self.store.getCredentials(localpart)
        if credentials is None:
            return None
        return credentials.keys.get(mechanism)

    def _fakeKeys(self) -> ScramKeys:
        # Checked against when the user does not exist, so that an unknown user costs the same
        # PBKDF2 run as a wrong password and cannot be told apart by timing.
        if self._dummyKeys is None or self._dummyKeys.iterations != self.config.scramIterations:
            self._dummyKeys = scram.deriveKeys(
                CHECK_MECHANISM, secrets.token_urlsafe(16), self.config.scramIterations
            )
        return self._dummyKeys

    async def checkPassword(self, localpart: str, password: str) -> bool:
        """
        Whether C{password} is the password of the normalised C{localpart}: one PBKDF2 run
        (SCRAM-SHA-256 keys) and a constant-time comparison.  Unknown users and passwords that
        fail SASLprep are simply wrong.
        """
        if not isinstance(password, str) or len(password) > 4 * MAX_PASSWORD_LENGTH:
            return False
        try:
            prepared = saslprep(password)
        except ScramException:
            return False
        keys = await self.getScramKeys(localpart, CHECK_MECHANISM)
        known = keys is not None
        if keys is None:
            keys = self._fakeKeys()
        matches = await self._offload(scram.verifyPassword, CHECK_MECHANISM, keys, prepared)
        return known and matches

    async def changePassword(self, localpart: str, password: str) -> None:
        """
        Replace the password of the normalised C{localpart}.  Live tokens stay valid.

        @raise Unprocessable: (field C{password}) for an unacceptable password.
        @raise xmppjson.storage.UnknownUser: no such user.
        """
        prepared = self.preparePassword(password)
        credentials = await self._makeCredentials(prepared)
        await self.store.setCredentials(localpart, credentials)
        self.log.info("Password changed for {jid}", jid=self.bareJID(localpart))

    # -- tokens -----------------------------------------------------------------------------

    def now(self) -> datetime.datetime:
        """The reactor's time, as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), tz=datetime.timezone.utc)

    async def login(self, jidOrLocalpart: str, password: str) -> tuple[str, str]:
        """
        Check a password and issue a new login token (earlier tokens stay valid).

        @param jidOrLocalpart: a localpart or a JID of this domain.
        @return: C{(token, localpart)}: the token (48 URL-safe characters) expires after
            C{config.tokenTTL} seconds.
        @raise NotAuthorized: unknown user, wrong password, or a JID of another domain; the
            three are not told apart.
        """
        try:
            localpart = self.localpartOf(jidOrLocalpart)
        except Unprocessable:
            raise NotAuthorized("wrong jid or password") from None
        if not await self.checkPassword(localpart, password):
            raise NotAuthorized("wrong jid or password")
        token = secrets.token_urlsafe(36)
        now = self.now()
        expires = now + datetime.timedelta(seconds=self.config.tokenTTL)
        await self.store.addToken(hashToken(token), localpart, expires)
        await self._maybePurge(now)
        return token, localpart

    async def _maybePurge(self, now: datetime.datetime) -> None:
        seconds = now.timestamp()
        if self._lastPurge is not None and seconds - self._lastPurge < PURGE_INTERVAL:
            return
        self._lastPurge = seconds
        try:
            count = await self.store.purgeExpiredTokens(now)
        except Exception:  # noqa: BLE001
            # Housekeeping only: the login itself has succeeded.
            self.log.failure("Could not purge expired tokens")
        else:
            if count:
                self.log.debug("Purged {count} expired tokens", count=count)

    async def authenticateToken(self, token: str) -> str | None:
        """The normalised localpart owning a live C{token}, or C{None}."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        localpart = await self.store.lookupToken(hashToken(token), self.now())
        return localpart or None

    async def revokeToken(self, token: str) -> bool:
        """Revoke one token; C{True} if it existed."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return False
        return bool(await self.store.revokeToken(hashToken(token)))
