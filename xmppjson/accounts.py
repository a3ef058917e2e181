"""
Accounts: registration, password checks (SASL PLAIN, SCRAM, REST login), login tokens.

Every door checks passwords and tokens here and nowhere else.  Passwords are SASLprep'ed
(RFC 4013) and stored only as SCRAM keys (L{xmppjson.scram}); login tokens are random and stored
only as their SHA-256.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import math
import re
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from scramp.utils import ScramException, saslprep
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from xmppjson import scram
from xmppjson.config import Config
from xmppjson.error import Forbidden, NotAuthorized, PolicyViolation, Unprocessable
from xmppjson.limits import FailureThrottle
from xmppjson.storage import Credentials, ScramKeys

_T = TypeVar("_T")

#: The longest localpart, in UTF-8 bytes (RFC 7622 section 3.3.1).
MAX_LOCALPART_BYTES = 1023

#: The longest password accepted, in characters (after SASLprep).  PBKDF2 cost does not grow
#: with the password, but nothing sensible is longer and a limit keeps requests small.
MAX_PASSWORD_LENGTH = 1024

#: Tokens longer than this are refused without asking the store (ours are 48 characters).
MAX_TOKEN_LENGTH = 512

#: The mechanisms whose keys L{Accounts.checkPassword} verifies a plain password against, in
#: order of preference: the cheapest PBKDF2 first.  Every account stores keys for all of
#: L{scram.MECHANISMS}, and anyone who can read them can attack the weakest, so checking with
#: the SHA-1 keys costs no protection and a third less CPU per login than SHA-256 (Prosody's
#: hashed store checks the same way); SHA-256 serves accounts that have no SHA-1 keys.
CHECK_MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")

#: How often, at most, L{Accounts.login} sweeps expired tokens out of the store (seconds).
PURGE_INTERVAL = 3600.0


#: Printable ASCII without the characters nodeprep prohibits (RFC 3920 appendix A.5: space and
#: C{"&'/:<>@}): for such a localpart nodeprep only lowercases, so the stringprep tables (about
#: 45 microseconds a name, the most expensive step of a login after PBKDF2) are skipped.
_PLAIN_NODE = re.compile(
    "[" + re.escape("".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "\"&'/:<>@")) + "]+"
)


def saslprepPassword(password: str) -> str:
    """
    SASLprep (RFC 4013) a password: printable ASCII is its own SASLprep (nothing in it is
    mapped, normalised or prohibited), anything else goes through the full profile.

    @raise ScramException: the password is not allowed by SASLprep.
    """
    if password.isascii() and password.isprintable():
        return password
    return saslprep(password)


def hashToken(token: str) -> str:
    """The form in which a login token is stored: its SHA-256, in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def addressKey(address: str | None) -> str | None:
    """
    The key under which a client address is throttled: an IPv4 address as it is, an IPv6 one
    by its /64 (one subscriber usually holds a whole /64, so counting single addresses would let
    it rotate through them) except the loopback address, an IPv4-mapped IPv6 address as the
    IPv4 address (the same rule as the XMPP door's C{xmppjson.c2s.register.addressKey}).  Anything that is
    not an IP address (a Unix socket path, a test's name) is its own key; C{None} stays C{None}.
    """
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.is_loopback:
            # ::1 alone, not the /64 around it (which holds no other host anyway)
            return str(ip)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _accountKey(localpart: str) -> bytes:
    # Throttles hold up to 100000 keys; a localpart may be 1023 bytes, its digest is 16.
    return hashlib.blake2b(localpart.encode("utf-8"), digest_size=16).digest()


class Throttled(PolicyViolation):
    """
    Too many failed logins (or registrations) for an account or from an address: the attempt
    was refused without looking at the credentials.  HTTP 429 with C{Retry-After}; stanza error
    C{policy-violation}/C{wait}.

    @ivar retryAfter: seconds until an attempt may succeed again.
    """

    def __init__(self, text: str, retryAfter: float):
        super().__init__(text, errorType="wait")
        self.retryAfter = retryAfter

    @property
    def retryAfterHeader(self) -> str:
        """C{Retry-After} in whole seconds, rounded up (and at least 1)."""
        return str(max(1, math.ceil(self.retryAfter)))


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

    Throttling, shared by every door that checks passwords (see C{docs/limits.md}): failed
    logins are counted per account and per client address (C{config.authFailureLimit} in
    C{config.authFailurePeriod} seconds), registrations per address
    (C{config.registrationsPerAddress} in C{config.registrationPeriod}).  L{login} and
    L{register} apply them when given the client's C{address}; a door with its own password
    exchange (SASL) uses the parts:

     - C{loginRetryAfter(localpart, address) -> float}: 0 when an attempt may be checked now,
       else the seconds to wait (C{loginAllowed} says the same as a bool).  Call it before
       checking the credentials, and refuse without checking them while it is not 0.
     - C{loginFailed(localpart, address)}: the credentials were wrong.
     - C{loginSucceeded(localpart, address)}: they were right (forgets the account's failures).
     - C{registrationRetryAfter(address) -> float}, C{registered(address)}.

    C{localpart} is the normalised localpart the client I{tried} (or C{None} if it is not a
    valid one), whether or not the account exists: an unknown account is throttled exactly like
    a known one, so the throttle does not tell who has an account.  C{address} is the client's
    IP address as a string (C{None} if unknown); IPv6 addresses count by /64 (L{addressKey}).

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
        self.accountFailures = FailureThrottle(
            config.authFailureLimit, config.authFailurePeriod, reactor
        )
        self.addressFailures = FailureThrottle(
            config.authFailureLimit, config.authFailurePeriod, reactor
        )
        # FailureThrottle counts events in a window: here, accounts created per address.
        self.registrations = FailureThrottle(
            config.registrationsPerAddress, config.registrationPeriod, reactor
        )
        self._registrationExempt = {addressKey(a) for a in config.registrationExempt}
        # One registration at a time per address, so that parallel requests cannot all pass
        # the check before the first of them is counted.
        self._registrationLocks: dict[str, defer.DeferredLock] = {}

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
        if len(localpart) <= MAX_LOCALPART_BYTES and _PLAIN_NODE.fullmatch(localpart):
            return localpart.lower()
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
            prepared = saslprepPassword(password)
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

    async def register(self, localpart: str, password: str, address: str | None = None) -> str:
        """
        Create an account.

        @param localpart: the localpart, or a bare JID of this domain.
        @param address: the client's address: when given, registrations from it are throttled
            (one at a time, at most C{config.registrationsPerAddress} per
            C{config.registrationPeriod}; the addresses in C{config.registrationExempt} are not).
        @return: the normalised localpart.
        @raise Forbidden: registration is closed.
        @raise Throttled: too many registrations from C{address}.
        @raise Unprocessable: invalid localpart or password (every invalid field is listed).
        @raise xmppjson.storage.UserExists: the localpart is taken.
        """
        if self.config.registration != "open":
            raise Forbidden("registration is closed on this server")
        key = addressKey(address)
        if key is None or key in self._registrationExempt or self.config.registrationsPerAddress <= 0:
            return await self._register(localpart, password)
        lock = self._registrationLocks.get(key)
        if lock is None:
            lock = self._registrationLocks[key] = defer.DeferredLock()
        try:
            async with lock:
                wait = self.registrationRetryAfter(address)
                if wait:
                    self.log.info("Registration throttled for {key}", key=key)
                    raise Throttled(
                        f"too many registrations from your address; try again in "
                        f"{math.ceil(wait)} seconds",
                        wait,
                    )
                node = await self._register(localpart, password)
                self.registered(address)
                return node
        finally:
            if not lock.locked and not lock.waiting:
                self._registrationLocks.pop(key, None)

    async def _register(self, localpart: str, password: str) -> str:
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
                CHECK_MECHANISMS[0], secrets.token_urlsafe(16), self.config.scramIterations
            )
        return self._dummyKeys

    async def checkPassword(self, localpart: str, password: str) -> bool:
        """
        Whether C{password} is the password of the normalised C{localpart}: one PBKDF2 run
        (with the keys of the first of L{CHECK_MECHANISMS} the account has) and a constant-time
        comparison.  Unknown users and passwords that fail SASLprep are simply wrong.
        """
        if not isinstance(password, str) or len(password) > 4 * MAX_PASSWORD_LENGTH:
            return False
        try:
            prepared = saslprepPassword(password)
        except ScramException:
            return False
        credentials = await self.store.getCredentials(localpart)
        stored = credentials.keys if credentials is not None else {}
        mechanism = next((m for m in CHECK_MECHANISMS if m in stored), None)
        known = mechanism is not None
        if mechanism is None:
            mechanism, keys = CHECK_MECHANISMS[0], self._fakeKeys()
        else:
            keys = stored[mechanism]
        matches = await self._offload(scram.verifyPassword, mechanism, keys, prepared)
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

    async def login(
        self, jidOrLocalpart: str, password: str, address: str | None = None
    ) -> tuple[str, str]:
        """
        Check a password and issue a new login token (earlier tokens stay valid).

        @param jidOrLocalpart: a localpart or a JID of this domain.
        @param address: the client's address: when given, failed logins are throttled per
            address as well as per account (without it, per account only).
        @return: C{(token, localpart)}: the token (48 URL-safe characters) expires after
            C{config.tokenTTL} seconds.
        @raise NotAuthorized: unknown user, wrong password, or a JID of another domain; the
            three are not told apart.
        @raise Throttled: too many failed logins for this account or from this address; the
            password was not checked.
        """
        try:
            localpart: str | None = self.localpartOf(jidOrLocalpart)
        except Unprocessable:
            localpart = None
        self.checkLoginAllowed(localpart, address)
        if localpart is None or not await self.checkPassword(localpart, password):
            self.loginFailed(localpart, address)
            raise NotAuthorized("wrong jid or password")
        self.loginSucceeded(localpart, address)
        token = secrets.token_urlsafe(36)
        now = self.now()
        expires = now + datetime.timedelta(seconds=self.config.tokenTTL)
        await self.store.addToken(hashToken(token), localpart, expires)
        await self._maybePurge(now)
        return token, localpart

    # -- throttling -------------------------------------------------------------------------

    def loginRetryAfter(self, localpart: str | None, address: str | None) -> float:
        """
        Seconds before a login attempt for C{localpart} from C{address} may be checked; 0 when
        it may be checked now.  See the class docstring.
        """
        wait = 0.0
        if localpart is not None:
            wait = self.accountFailures.retryAfter(_accountKey(localpart))
        key = addressKey(address)
        if key is not None:
            wait = max(wait, self.addressFailures.retryAfter(key))
        return wait

    def loginAllowed(self, localpart: str | None, address: str | None) -> bool:
        """Whether a login attempt may be checked now (L{loginRetryAfter} is 0)."""
        return self.loginRetryAfter(localpart, address) == 0

    def checkLoginAllowed(self, localpart: str | None, address: str | None) -> None:
        """
        @raise Throttled: when L{loginRetryAfter} is not 0.  The text is the same whether the
            account, the address or both are blocked, and whether the account exists or not.
        """
        wait = self.loginRetryAfter(localpart, address)
        if wait:
            self.log.info(
                "Login throttled for {jid} from {address}",
                jid=self.bareJID(localpart) if localpart else "?",
                address=address,
            )
            raise Throttled(
                f"too many failed logins; try again in {math.ceil(wait)} seconds", wait
            )

    def loginFailed(self, localpart: str | None, address: str | None) -> None:
        """Wrong credentials for C{localpart} (tried, existing or not) from C{address}."""
        if localpart is not None:
            self.accountFailures.failed(_accountKey(localpart))
        key = addressKey(address)
        if key is not None:
            self.addressFailures.failed(key)

    def loginSucceeded(self, localpart: str, address: str | None) -> None:
        """
        Right credentials: the account's failures are forgotten.  The address's are not, so
        that a client holding one valid account cannot reset its count between guesses at
        other accounts.
        """
        self.accountFailures.succeeded(_accountKey(localpart))

    def registrationRetryAfter(self, address: str | None) -> float:
        """Seconds before C{address} may register another account; 0 when it may now."""
        key = addressKey(address)
        if key is None or key in self._registrationExempt:
            return 0.0
        return self.registrations.retryAfter(key)

    def registered(self, address: str | None) -> None:
        """An account was created from C{address}: it counts towards the limit."""
        key = addressKey(address)
        if key is not None and key not in self._registrationExempt:
            self.registrations.failed(key)

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
