"""
A real XMPP client for the end-to-end test of the message archive (C{tests/test_archive_e2e.py}).

Run as a separate process (slixmpp runs on asyncio, the server under test on Twisted's reactor).
Two users log in with slixmpp (no TLS, SASL PLAIN: the server runs with C{--allow-plaintext}),
chat (C{--count} messages from the first to the second, one reply), and then query their own
archives with slixmpp's XEP-0313 plugin: the whole archive in one query, the same paged with
XEP-0059 (C{--page} at a time) forwards, and backwards from the last page; a C{with} filter,
the form and the metadata.  It prints one JSON object on stdout::

    {"ok": true, "live": [{"id": ..., "body": ..., "stanza_id": ...}], "receiver_all": ...}

or C{{"ok": false, "error": "...", "stage": "..."}}, always within C{--timeout} seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

import slixmpp


def makeClient(jid: str, password: str) -> slixmpp.ClientXMPP:
    client = slixmpp.ClientXMPP(
        jid, password, plugin_config={"feature_mechanisms": {"unencrypted_plain": True}}
    )
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    for plugin in ("xep_0030", "xep_0313", "xep_0359"):
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
        client.add_event_handler("session_start", self._started)
        for event in ("failed_auth", "failed_all_auth", "disconnected"):
            client.add_event_handler(event, self._failed(event))
        client.add_event_handler("message", self._message)

    def _started(self, _event: Any) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def _failed(self, reason: str) -> Any:
        def fail(_event: Any) -> None:
            if not self.started.done():
                self.started.set_exception(RuntimeError(reason))

        return fail

    def _message(self, message: Any) -> None:
        # Archive results arrive as messages too; only live chat goes in the queue.
        if message["type"] in ("chat", "normal") and message["body"]:
            self.messages.put_nowait(message)

    async def receive(self) -> dict[str, Any]:
        message = await self.messages.get()
        return {
            "from": str(message["from"]),
            "id": message["id"],
            "body": message["body"],
            "stanza_id": message["stanza_id"]["id"],
            "stanza_id_by": str(message["stanza_id"]["by"]),
        }


def entry(result: Any) -> dict[str, Any]:
    """One archive result as plain data."""
    mam = result["mam_result"]
    inner = mam["forwarded"]["stanza"]
    return {
        "id": mam["id"],
        "queryid": mam["queryid"],
        "stamp": mam["forwarded"]["delay"]["stamp"].isoformat(),
        "from": str(inner["from"]),
        "to": str(inner["to"]),
        "message_id": inner["id"],
        "body": inner["body"],
    }


async def everything(client: slixmpp.ClientXMPP, timeout: float, **filters: Any) -> dict[str, Any]:
    """One query for the whole archive (within the page cap), with its fin."""
    iq = await client.plugin["xep_0313"].retrieve(timeout=timeout, rsm={"max": 100}, **filters)
    fin = iq["mam_fin"]
    return {
        "results": [entry(r) for r in iq["mam"]["results"]],
        # the attribute as sent: slixmpp reads it as a boolean only if it is "true"
        "complete": fin.xml.get("complete"),
        "count": fin["rsm"]["count"],
        "first": fin["rsm"]["first"],
        "first_index": fin["rsm"]["first_index"],
        "last": fin["rsm"]["last"],
    }


async def scenario(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False}
    sender = Login(makeClient(args.sender, args.sender_password))
    receiver = Login(makeClient(args.receiver, args.receiver_password))
    try:
        result["stage"] = "login"
        for login in (sender, receiver):
            login.client.connect(args.host, args.port)
        await asyncio.gather(sender.started, receiver.started)
        for login in (sender, receiver):
            login.client.send_presence()
        # Presence is processed in order with the messages that follow on the same stream,
        # but the receiver's must reach the server before the sender's first message.
        await receiver.client.plugin["xep_0030"].get_info(
            jid=receiver.client.boundjid.bare, timeout=args.timeout)

        result["stage"] = "chat"
        live = []
        for n in range(args.count):
            sender.client.send_message(mto=receiver.client.boundjid.bare, mbody=f"message {n}",
                                       mtype="chat")
            live.append(await receiver.receive())
        receiver.client.send_message(mto=sender.client.boundjid.full, mbody="reply",
                                     mtype="chat")
        live.append(await sender.receive())
        result["live"] = live

        result["stage"] = "disco"
        info = await receiver.client.plugin["xep_0030"].get_info(
            jid=receiver.client.boundjid.bare, timeout=args.timeout)
        result["features"] = sorted(info["disco_info"]["features"])

        result["stage"] = "archives"
        mam = receiver.client.plugin["xep_0313"]
        result["receiver_all"] = await everything(receiver.client, args.timeout)
        result["sender_all"] = await everything(sender.client, args.timeout)
        result["receiver_with_sender"] = await everything(
            receiver.client, args.timeout, with_jid=slixmpp.JID(sender.client.boundjid.bare))

        result["stage"] = "paging"
        paged = []
        iterator = mam.iterate(rsm={"max": args.page})
        async for message in iterator:
            paged.append(entry(message))
        result["paged"] = paged

        result["stage"] = "paging backwards"
        # From the last page (an empty <before/>) back to the first, newest message first.
        backwards = []
        async for message in mam.iterate(reverse=True, rsm={"max": args.page}):
            backwards.append(entry(message))
        result["backwards"] = backwards

        result["stage"] = "form"
        form = await mam.get_fields(timeout=args.timeout)
        result["fields"] = sorted(form.get_fields())

        result["stage"] = "metadata"
        metadata = await mam.get_archive_metadata(timeout=args.timeout)
        result["metadata"] = {
            "start": metadata["mam_metadata"]["start"]["id"],
            "end": metadata["mam_metadata"]["end"]["id"],
        }
        result["ok"] = True
        del result["stage"]
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        result["error"] = f"{e.__class__.__name__}: {e}"
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
    parser.add_argument("--sender", required=True)
    parser.add_argument("--sender-password", required=True)
    parser.add_argument("--receiver", required=True)
    parser.add_argument("--receiver-password", required=True)
    parser.add_argument("--count", type=int, default=5, help="messages the sender sends")
    parser.add_argument("--page", type=int, default=2, help="page size when paging")
    parser.add_argument("--timeout", type=float, default=20.0)
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
