"""
XEP-0077 In-Band Registration on the XMPP door.

 - I{Before authentication} a client may ask for the form (C{iq get}) and create an account
   (C{iq set} with C{<username/>} and C{<password/>}), when C{config.registration} is C{open}.
   The stream feature C{<register xmlns='http://jabber.org/features/iq-register'/>} is
   advertised then.  Accounts are made by L{xmppjson.accounts.Accounts.register}, the same
   path as C{POST /users}, so the rules for names and passwords are the same.
 - I{After binding} C{jabber:iq:register} to the server (or with no C{to}) changes the
   user's password (XEP-0077 section 3.3) through C{Accounts.changePassword}; the handler is
   registered with the core's iq dispatcher, so disco lists the feature.  Cancelling an
   account (C{<remove/>}) is not offered: C{not-allowed}.

Registrations per client address are throttled (C{config.registrationsPerAddress} per
C{config.registrationPeriod}; the addresses in C{config.registrationExempt}, loopback by
default, are not).  Registrations from one address run one at a time, so parallel connections
cannot slip past the limit.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from xmppjson.accounts import addressKey
from xmppjson.config import Config
from xmppjson.error import Conflict, Unprocessable, XMPPJSONError, asError

NS_REGISTER = "jabber:iq:register"
NS_FEATURE_REGISTER = "http://jabber.org/features/iq-register"
NS_CLIENT = "jabber:client"

INSTRUCTIONS = "Choose a user name and a password (at least {n} characters) for {domain}."


def _text(query: domish.Element, name: str) -> str | None:
    for child in query.elements():
        if child.name == name and child.uri in (NS_REGISTER, None):
            return str(child)
    return None


def _has(query: domish.Element, name: str) -> bool:
    return any(child.name == name for child in query.elements())


def _result(iq: domish.Element, domain: str) -> domish.Element:
    reply = domish.Element((NS_CLIENT, "iq"))
    reply["type"] = "result"
    if iq.getAttribute("id") is not None:
        reply["id"] = iq["id"]
    if iq.getAttribute("to"):
        reply["from"] = domain
    return reply


def errorFor(iq: domish.Element, error: XMPPJSONError, domain: str) -> domish.Element:
    """The error reply to a registration iq (its payload echoed, as XEP-0077 shows)."""
    reply = domish.Element((NS_CLIENT, "iq"))
    reply["type"] = "error"
    if iq.getAttribute("id") is not None:
        reply["id"] = iq["id"]
    if iq.getAttribute("to"):
        reply["from"] = domain
    for child in iq.elements():
        reply.addChild(child)
        break
    stanzaError = error.toStanzaError()
    element = StanzaError(stanzaError.condition, stanzaError.type, stanzaError.text).getElement()
    element.uri = element.defaultUri = NS_CLIENT
    reply.addChild(element)
    return reply


class NotAllowed(XMPPJSONError):
    condition = "not-allowed"


class Registration:
    """
    In-band registration and password change for one listener.

    Registrations are counted per address by L{Accounts} (shared with REST registrations).
    """

    log = Logger()

    def __init__(self, config: Config, accounts: Any, reactor: Any):
        self.config = config
        self.accounts = accounts
        self.domain = config.domain
        self.exempt = {addressKey(host) for host in config.registrationExempt}
        self._locks: dict[str, defer.DeferredLock] = {}

    @property
    def open(self) -> bool:
        return self.config.registration == "open"

    def feature(self) -> domish.Element | None:
        """The stream feature to advertise before authentication, or C{None}."""
        return domish.Element((NS_FEATURE_REGISTER, "register")) if self.open else None

    def form(self, iq: domish.Element) -> domish.Element:
        """The answer to C{iq get}: what to fill in (XEP-0077 section 3.1)."""
        reply = _result(iq, self.domain)
        query = reply.addElement((NS_REGISTER, "query"))
        query.addElement(
            "instructions",
            content=INSTRUCTIONS.format(n=self.config.minPasswordLength, domain=self.domain),
        )
        query.addElement("username")
        query.addElement("password")
        return reply

    # -- before authentication -----------------------------------------------------------

    async def register(self, iq: domish.Element, query: domish.Element, host: str) -> domish.Element:
        """
        Answer a registration iq received before authentication from C{host}.  Never
        raises: errors become the error reply.
        """
        try:
            return await self._register(iq, query, host)
        except Exception as e:  # noqa: BLE001 - every failure is answered as a stanza error
            error = asError(e)
            if error.condition == "internal-server-error":
                self.log.failure("In-band registration failed", Failure(e))
            return errorFor(iq, error, self.domain)

    async def _register(self, iq: domish.Element, query: domish.Element, host: str) -> domish.Element:
        kind = iq.getAttribute("type")
        if kind not in ("get", "set"):
            raise XMPPJSONError("expected an iq get or set", condition="bad-request")
        if not self.open:
            raise NotAllowed("registration is closed on this server")
        if kind == "get":
            return self.form(iq)
        if _has(query, "remove"):
            raise NotAllowed("log in to manage an account")
        username, password = _text(query, "username"), _text(query, "password")
        if not username or not password:
            raise Unprocessable(
                [{"field": "username" if not username else "password", "message": "required"}]
            )
        if await self.accounts.userExists(username):
            # Known before the password hash is computed (which costs milliseconds of CPU).
            raise Conflict("that user name is taken")
        key = addressKey(host)
        if key in self.exempt or self.config.registrationsPerAddress <= 0:
            await self.accounts.register(username, password)
            return _result(iq, self.domain)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        try:
            async with lock:
                if self.accounts.registrationRetryAfter(host):
                    self.log.info("Registration throttled for {key}", key=key)
                    raise XMPPJSONError(
                        "too many registrations from your address; try again later",
                        condition="policy-violation",
                        errorType="wait",
                    )
                await self.accounts.register(username, password)
                # Shared with REST registrations: one count per address for every door.
                self.accounts.registered(host)
        finally:
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)
        return _result(iq, self.domain)

    # -- after binding: the core's iq handler --------------------------------------------

    def handleIQ(self, session: Any, iq: domish.Element, query: domish.Element) -> Any:
        """
        C{jabber:iq:register} from a bound session, called by the core's iq dispatcher
        (errors raised here become stanza errors there).
        """
        kind = iq.getAttribute("type")
        if kind == "get":
            reply = _result(iq, self.domain)
            answer = reply.addElement((NS_REGISTER, "query"))
            answer.addElement("registered")
            answer.addElement("username", content=session.localpart)
            answer.addElement("password")
            return reply
        if kind != "set":
            raise XMPPJSONError("expected an iq get or set", condition="bad-request")
        if _has(query, "remove"):
            raise NotAllowed("accounts cannot be cancelled in-band here")
        return self._changePassword(session, iq, query)

    async def _changePassword(self, session: Any, iq: domish.Element, query: domish.Element) -> domish.Element:
        username, password = _text(query, "username"), _text(query, "password")
        if not password:
            raise Unprocessable([{"field": "password", "message": "required"}])
        if username:
            try:
                named = self.accounts.localpartOf(username)
            except Unprocessable:
                named = None
            if named != session.localpart:
                raise NotAllowed("you can only change your own password")
        await self.accounts.changePassword(session.localpart, password)
        return _result(iq, self.domain)
