"""
A native XMPP user for the browser scenarios: slixmpp over plain TCP (SASL PLAIN; the server
runs with C{allowPlaintext}), steered line by line by C{scenarios.mjs}.

Commands, one JSON object per line on stdin::

    {"cmd": "send", "to": "carol@localhost", "body": "hi"}
    {"cmd": "state", "to": "carol@localhost", "state": "composing"}
    {"cmd": "presence", "show": "away", "status": "brb"}     (show "" = available)
    {"cmd": "ping"}                                          (answered by a "pong" event)
    {"cmd": "quit"}

Events, one JSON object per line on stdout::

    {"event": "ready", "jid": "dave@localhost/peer"}
    {"event": "message", "from": "...", "body": "...", "id": "...", "type": "chat"}
    {"event": "chatstate", "from": "...", "state": "composing"}
    {"event": "presence", "from": "...", "type": "available", "show": "", "status": ""}
    {"event": "subscribe", "from": "..."}      (accepted automatically, and asked back)
    {"event": "unsubscribed", "from": "..."}   (no longer sees their presence)
    {"event": "failed", "error": "..."}

Like a desktop client set to accept everyone, it approves subscription requests and subscribes
back.  It exits on "quit", on end of input, or after C{--timeout} seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

import slixmpp


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


class Peer:
    def __init__(self, args: argparse.Namespace):
        client = slixmpp.ClientXMPP(
            args.jid,
            args.password,
            plugin_config={
                "feature_mechanisms": {"use_mech": "PLAIN", "unencrypted_plain": True},
            },
        )
        client.enable_direct_tls = False
        client.enable_starttls = False
        client.enable_plaintext = True
        client.whitespace_keepalive = False
        client.register_plugin("xep_0085")  # chat states
        client.register_plugin("xep_0199")  # ping
        client.roster.auto_authorize = True
        client.roster.auto_subscribe = True
        self.client = client
        self.args = args
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        client.add_event_handler("session_start", self._started)
        client.add_event_handler("failed_auth", self._failed)
        client.add_event_handler("message", self._message)
        client.add_event_handler("chatstate", self._chatstate)
        client.add_event_handler("presence_available", self._presence)
        client.add_event_handler("presence_unavailable", self._presence)
        client.add_event_handler("presence_subscribe", self._subscribe)
        client.add_event_handler("presence_unsubscribed", self._unsubscribed)

    async def _started(self, _event: Any) -> None:
        await self.client.get_roster()
        self.client.send_presence(pstatus=self.args.status or None)
        emit(event="ready", jid=str(self.client.boundjid))
        if not self.started.done():
            self.started.set_result(None)

    def _failed(self, _event: Any) -> None:
        if not self.started.done():
            self.started.set_exception(RuntimeError("authentication failed"))

    def _message(self, message: Any) -> None:
        if message["type"] == "error":
            emit(event="message-error", **{"from": str(message["from"])},
                 condition=message["error"]["condition"], id=message["id"])
        elif message["body"]:
            emit(event="message", **{"from": str(message["from"])}, body=message["body"],
                 id=message["id"], type=message["type"])

    def _chatstate(self, message: Any) -> None:
        emit(event="chatstate", **{"from": str(message["from"])}, state=message["chat_state"])

    def _presence(self, presence: Any) -> None:
        emit(event="presence", **{"from": str(presence["from"])}, type=presence["type"],
             show=presence["show"], status=presence["status"])

    def _subscribe(self, presence: Any) -> None:
        emit(event="subscribe", **{"from": str(presence["from"])})

    async def _ping(self) -> None:
        try:
            await self.client.plugin["xep_0199"].ping(jid=self.client.boundjid.host, timeout=5)
        except Exception as e:  # noqa: BLE001 - reported to the driver as an event
            emit(event="failed", error=f"ping: {e}")
        else:
            emit(event="pong")

    def _unsubscribed(self, presence: Any) -> None:
        emit(event="unsubscribed", **{"from": str(presence["from"])})

    def handle(self, command: dict[str, Any]) -> bool:
        cmd = command.get("cmd")
        if cmd == "send":
            self.client.send_message(mto=command["to"], mbody=command["body"], mtype="chat")
        elif cmd == "state":
            message = self.client.make_message(mto=command["to"], mtype="chat")
            message["chat_state"] = command["state"]
            message.send()
        elif cmd == "presence":
            self.client.send_presence(pshow=command.get("show") or None,
                                      pstatus=command.get("status") or None)
        elif cmd == "ping":
            asyncio.ensure_future(self._ping())
        elif cmd == "quit":
            return False
        else:
            emit(event="failed", error=f"unknown command {cmd!r}")
        return True


async def run(args: argparse.Namespace) -> None:
    peer = Peer(args)
    peer.client.connect(args.host, args.port)
    try:
        await asyncio.wait_for(peer.started, 10)
    except Exception as e:  # noqa: BLE001 - reported to the driver as an event
        emit(event="failed", error=str(e) or e.__class__.__name__)
        return
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            command = json.loads(line)
        except ValueError:
            emit(event="failed", error=f"not JSON: {line!r}")
            continue
        if not peer.handle(command):
            break
    peer.client.disconnect(wait=0.5)
    await asyncio.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jid", required=True, help="full JID, e.g. dave@localhost/peer")
    parser.add_argument("--password", required=True)
    parser.add_argument("--status", default="", help="status text of the first presence")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.CRITICAL, stream=sys.stderr)

    async def bounded() -> None:
        try:
            await asyncio.wait_for(run(args), args.timeout)
        except TimeoutError:
            emit(event="failed", error="timeout")

    asyncio.run(bounded())


if __name__ == "__main__":
    main()
