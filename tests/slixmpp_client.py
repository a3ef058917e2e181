"""
A real XMPP client for the end-to-end tests of the XMPP door (C{tests/test_c2s_e2e.py}).

Run as a separate process (slixmpp runs on asyncio, the server under test on Twisted's reactor).
It logs two users in with slixmpp, one sending and one receiving, sends a message from the first
to the second, and prints one JSON object on stdout::

    {"ok": true, "sender": "...", "receiver": "...", "encrypted": true,
     "mechanism": "SCRAM-SHA-256", "received": {"from": "...", "body": "...", "id": "..."},
     "ping": true}

or C{{"ok": false, "error": "...", "stage": "..."}}.  It always exits within C{--timeout} seconds.

Scenarios (C{--scenario}):
 - C{message} (the default): the above.
 - C{sm}: the receiver enables XEP-0198 stream management, gets C{--count} messages, then its
   TCP connection is cut without a closing handshake; the sender sends C{--count} more; the
   receiver reconnects and resumes.  Reports every body received (C{"bodies"}) and whether the
   stream was resumed (C{"resumed"}).
 - C{csi}: the receiver goes inactive (XEP-0352); the sender sends two directed presences and a
   chat state, waits, then a message with a body.  Reports what the receiver got while the
   sender was waiting (C{"whileHeld"}) and after (C{"afterBody"}).
 - C{register}: the sender's account does not exist yet: it registers in-band (XEP-0077) on
   the way in, logs in, changes its password to C{--new-password}, and logs in again with it.

Modes:
 - C{starttls}: STARTTLS is required, the server's certificate is trusted through C{--ca-file}
   (the self-signed PEM the server generated), SASL SCRAM.
 - C{directtls}: TLS from the first byte (XEP-0368), on an C{ssl:} listener.
 - C{plain}: no TLS at all, SASL PLAIN (the server must run with C{--allow-plaintext}).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
import xml.etree.ElementTree as ET
from typing import Any

import slixmpp


def makeClient(
    jid: str, password: str, args: argparse.Namespace, plugins: tuple[str, ...] = ()
) -> slixmpp.ClientXMPP:
    mechanisms: dict[str, Any] = {}
    if args.mech:
        mechanisms["use_mech"] = args.mech
    if args.mode == "plain":
        mechanisms["unencrypted_plain"] = True
    client = slixmpp.ClientXMPP(jid, password, plugin_config={"feature_mechanisms": mechanisms})
    # Connect exactly where told: no DNS SRV, no direct TLS attempt on a STARTTLS port.
    client.enable_direct_tls = args.mode == "directtls"
    client.enable_starttls = args.mode == "starttls"
    client.enable_plaintext = args.mode == "plain"
    if args.ca_file:
        client.ca_certs = args.ca_file
    client.register_plugin("xep_0199")
    for plugin in plugins:
        client.register_plugin(plugin)
    client.whitespace_keepalive = False
    return client


class Login:
    """One client's progress, as futures the scenario awaits."""

    def __init__(self, client: slixmpp.ClientXMPP):
        loop = asyncio.get_running_loop()
        self.client = client
        self.started: asyncio.Future[None] = loop.create_future()
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.mechanism: str | None = None
        self.resumed: asyncio.Future[None] = loop.create_future()
        client.add_event_handler("session_resumed", self._resumed)
        client.add_event_handler("session_start", self._started)
        client.add_event_handler("auth_success", self._authenticated)
        client.add_event_handler("failed_auth", self._failed("failed_auth"))
        client.add_event_handler("failed_all_auth", self._failed("failed_all_auth"))
        client.add_event_handler("ssl_invalid_chain", self._failed("ssl_invalid_chain"))
        client.add_event_handler("stream_error", self._streamError)
        client.add_event_handler("disconnected", self._failed("disconnected"))
        client.add_event_handler("message", self.messages.put_nowait)

    def _started(self, _event: Any) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def _resumed(self, _event: Any) -> None:
        if not self.resumed.done():
            self.resumed.set_result(None)

    def _authenticated(self, _event: Any) -> None:
        self.mechanism = self.client.plugin["feature_mechanisms"].mech.name

    def _failed(self, reason: str) -> Any:
        def fail(_event: Any) -> None:
            if not self.started.done():
                self.started.set_exception(RuntimeError(reason))

        return fail

    def _streamError(self, error: Any) -> None:
        if not self.started.done():
            self.started.set_exception(RuntimeError(f"stream_error:{error['condition']}"))

    @property
    def encrypted(self) -> bool:
        return isinstance(self.client.socket, (ssl.SSLObject, ssl.SSLSocket))


async def scenario(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenario == "sm":
        return await smScenario(args)
    if args.scenario == "csi":
        return await csiScenario(args)
    if args.scenario == "register":
        return await registerScenario(args)
    return await messageScenario(args)


async def nextBody(login: Login) -> str:
    """The body of the next chat message the client receives."""
    while True:
        message = await login.messages.get()
        if message["type"] in ("chat", "normal") and message["body"]:
            return str(message["body"])


async def closeAll(*logins: Login) -> None:
    for login in logins:
        try:
            login.client.disconnect(wait=0.5)
        except Exception:  # noqa: BLE001, S110 - best effort on the way out
            pass
    await asyncio.sleep(0.2)


async def smScenario(args: argparse.Namespace) -> dict[str, Any]:
    """XEP-0198: enable, lose the connection abruptly, resume, and lose no message."""
    result: dict[str, Any] = {"ok": False, "bodies": [], "resumed": False}
    sender = Login(makeClient(args.sender, args.sender_password, args))
    receiver = Login(makeClient(args.receiver, args.receiver_password, args, ("xep_0198",)))
    enabled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def onEnabled(_event: Any) -> None:
        if not enabled.done():
            enabled.set_result(None)

    receiver.client.add_event_handler("sm_enabled", onEnabled)
    try:
        result["stage"] = "login"
        for login in (sender, receiver):
            login.client.connect(args.host, args.port)
        await asyncio.gather(sender.started, receiver.started)
        await asyncio.wait_for(enabled, args.timeout)
        result["smId"] = receiver.client.plugin["xep_0198"].sm_id
        for login in (sender, receiver):
            login.client.send_presence()
        to = receiver.client.boundjid.full

        result["stage"] = "before"
        for n in range(args.count):
            sender.client.send_message(mto=to, mbody=f"before {n}", mtype="chat")
        for _ in range(args.count):
            result["bodies"].append(await nextBody(receiver))

        result["stage"] = "cut"
        # No </stream:stream>, no TCP half-close handshake from XMPP's point of view.
        receiver.client.abort()
        await asyncio.sleep(0.3)
        for n in range(args.count):
            sender.client.send_message(mto=to, mbody=f"while away {n}", mtype="chat")
        # A round trip through the server: all of them were handled before we come back.
        await sender.client.plugin["xep_0199"].ping(jid=args.domain, timeout=args.timeout)

        result["stage"] = "resume"
        receiver.client.connect(args.host, args.port)
        await asyncio.wait_for(receiver.resumed, args.timeout)
        result["resumed"] = True
        for _ in range(args.count):
            result["bodies"].append(await nextBody(receiver))
        result["stage"] = "after"
        sender.client.send_message(mto=to, mbody="after", mtype="chat")
        result["bodies"].append(await nextBody(receiver))
        # Nothing more arrives (no duplicates).
        await asyncio.sleep(0.5)
        while not receiver.messages.empty():
            message = receiver.messages.get_nowait()
            if message["body"]:
                result["bodies"].append(str(message["body"]))
        result["ok"] = True
        del result["stage"]
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        result["error"] = str(e) or e.__class__.__name__
    finally:
        await closeAll(sender, receiver)
    return result


async def csiScenario(args: argparse.Namespace) -> dict[str, Any]:
    """XEP-0352: what an inactive client receives, and when."""
    result: dict[str, Any] = {"ok": False}
    sender = Login(makeClient(args.sender, args.sender_password, args))
    receiver = Login(makeClient(args.receiver, args.receiver_password, args, ("xep_0352",)))
    received: list[str] = []

    def note(kind: str) -> Any:
        def handler(stanza: Any) -> None:
            if stanza["from"].bare != sender.client.boundjid.bare:
                return
            if kind == "presence":
                received.append(f"presence:{stanza['type']}")
            elif stanza["body"]:
                received.append(f"body:{stanza['body']}")
            else:
                states = [c.tag.split("}")[-1] for c in stanza.xml
                          if c.tag.startswith("{http://jabber.org/protocol/chatstates}")]
                received.append("chatstate:" + ",".join(states))

        return handler

    receiver.client.add_event_handler("presence", note("presence"))
    receiver.client.add_event_handler("message", note("message"))
    try:
        result["stage"] = "login"
        for login in (sender, receiver):
            login.client.connect(args.host, args.port)
        await asyncio.gather(sender.started, receiver.started)
        result["csiAdvertised"] = receiver.client.plugin["xep_0352"].enabled
        receiver.client.send_presence()
        receiver.client.plugin["xep_0352"].send_inactive()
        await receiver.client.plugin["xep_0199"].ping(jid=args.domain, timeout=args.timeout)
        to = receiver.client.boundjid.full

        result["stage"] = "held"
        sender.client.send_presence(pto=to, pshow="away")
        composing = sender.client.make_message(mto=to, mtype="chat")
        composing.xml.append(ET.Element("{http://jabber.org/protocol/chatstates}composing"))
        composing.send()
        sender.client.send_presence(pto=to, pshow="dnd")
        await sender.client.plugin["xep_0199"].ping(jid=args.domain, timeout=args.timeout)
        await asyncio.sleep(0.5)
        result["whileHeld"] = list(received)

        result["stage"] = "body"
        sender.client.send_message(mto=to, mbody="wake up", mtype="chat")
        await nextBody(receiver)
        await asyncio.sleep(0.2)
        result["afterBody"] = list(received)
        receiver.client.plugin["xep_0352"].send_active()
        result["ok"] = True
        del result["stage"]
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        result["error"] = str(e) or e.__class__.__name__
    finally:
        await closeAll(sender, receiver)
    return result


async def registerScenario(args: argparse.Namespace) -> dict[str, Any]:
    """XEP-0077: register in-band, log in, change the password, log in with the new one."""
    result: dict[str, Any] = {"ok": False, "registered": False}
    client = makeClient(args.sender, args.sender_password, args, ("xep_0077",))

    async def register(_form: Any) -> None:
        iq = client.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = client.boundjid.user
        iq["register"]["password"] = client.password
        await iq.send(timeout=args.timeout)
        result["registered"] = True

    client.add_event_handler("register", register)
    login = Login(client)
    try:
        result["stage"] = "register"
        client.connect(args.host, args.port)
        await login.started
        result["user"] = str(client.boundjid)
        result["stage"] = "change"
        await client.plugin["xep_0077"].change_password(args.new_password, timeout=args.timeout)
        result["stage"] = "again"
        again = Login(makeClient(args.sender, args.new_password, args))
        again.client.connect(args.host, args.port)
        await again.started
        result["loggedInAgain"] = True
        await closeAll(again)
        result["ok"] = True
        del result["stage"]
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        result["error"] = str(e) or e.__class__.__name__
    finally:
        await closeAll(login)
    return result


async def messageScenario(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False}
    sender = Login(makeClient(args.sender, args.sender_password, args))
    receiver = Login(makeClient(args.receiver, args.receiver_password, args))
    try:
        result["stage"] = "login"
        for login in (sender, receiver):
            login.client.connect(args.host, args.port)
        await asyncio.gather(sender.started, receiver.started)
        result["mechanism"] = sender.mechanism
        result["encrypted"] = sender.encrypted and receiver.encrypted
        result["sender"] = str(sender.client.boundjid)
        result["receiver"] = str(receiver.client.boundjid)

        result["stage"] = "presence"
        for login in (sender, receiver):
            login.client.send_presence()

        result["stage"] = "ping"
        await sender.client.plugin["xep_0199"].ping(jid=args.domain, timeout=args.timeout)
        result["ping"] = True

        result["stage"] = "message"
        sender.client.send_message(mto=receiver.client.boundjid.full, mbody=args.body, mtype="chat")
        while True:
            message = await receiver.messages.get()
            if message["type"] in ("chat", "normal") and message["body"]:
                break
        result["received"] = {
            "from": str(message["from"]),
            "body": message["body"],
            "id": message["id"],
        }
        result["ok"] = True
        del result["stage"]
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        result["error"] = str(e) or e.__class__.__name__
    finally:
        for login in (sender, receiver):
            try:
                login.client.disconnect(wait=0.5)
            except Exception:  # noqa: BLE001, S110 - best effort on the way out
                pass
        await asyncio.sleep(0.2)
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(scenario(args), args.timeout)
    except TimeoutError:
        return {"ok": False, "error": "timeout"}


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--mode", choices=("starttls", "directtls", "plain"), default="starttls")
    parser.add_argument("--mech", default=None, help="force one SASL mechanism")
    parser.add_argument("--ca-file", default=None, help="PEM file of the server certificate")
    parser.add_argument("--sender", required=True)
    parser.add_argument("--sender-password", required=True)
    parser.add_argument("--receiver", required=True)
    parser.add_argument("--receiver-password", required=True)
    parser.add_argument("--body", default="Hello from slixmpp")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--debug", action="store_true", help="slixmpp debug log on stderr")
    parser.add_argument(
        "--scenario", choices=("message", "sm", "csi", "register"), default="message"
    )
    parser.add_argument("--count", type=int, default=3, help="messages per phase (sm)")
    parser.add_argument("--new-password", default="changed-secret", help="(register)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parseArgs(sys.argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if arguments.debug else logging.CRITICAL,
        stream=sys.stderr,
        format="%(levelname)s %(name)s %(message)s",
    )
    print(json.dumps(asyncio.run(main(arguments))), flush=True)
