"""
A real XMPP client for the end-to-end tests of the XMPP door (C{tests/test_c2s_e2e.py}).

Run as a separate process (slixmpp runs on asyncio, the server under test on Twisted's reactor).
It logs two users in with slixmpp, one sending and one receiving, sends a message from the first
to the second, and prints one JSON object on stdout::

    {"ok": true, "sender": "...", "receiver": "...", "encrypted": true,
     "mechanism": "SCRAM-SHA-256", "received": {"from": "...", "body": "...", "id": "..."},
     "ping": true}

or C{{"ok": false, "error": "...", "stage": "..."}}.  It always exits within C{--timeout} seconds.

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
from typing import Any

import slixmpp


def makeClient(jid: str, password: str, args: argparse.Namespace) -> slixmpp.ClientXMPP:
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
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parseArgs(sys.argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if arguments.debug else logging.CRITICAL,
        stream=sys.stderr,
        format="%(levelname)s %(name)s %(message)s",
    )
    print(json.dumps(asyncio.run(main(arguments))), flush=True)
