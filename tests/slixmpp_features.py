"""
A real XMPP client for the end-to-end tests of the account features
(C{tests/test_features_e2e.py}): vCards (XEP-0054), vCard avatars (XEP-0153), last activity
(XEP-0012), blocking (XEP-0191) and carbons (XEP-0280), each driven through slixmpp's own plugin.

Run as a separate process (slixmpp runs on asyncio, the server under test on Twisted's reactor),
against a server with C{--allow-plaintext}.  Three clients log in: C{alice@DOMAIN/desk},
C{alice@DOMAIN/phone} and C{bob@DOMAIN/site} (alice and bob must be mutual contacts).  The script
prints one JSON object on stdout, the observations of every stage::

    {"ok": true, "carbons": {...}, "vcard": {...}, "avatar": {...}, "last": {...},
     "blocking": {...}, "lastOffline": {...}}

or C{"ok": false} with C{"stage"} and C{"error"}.  It always exits within C{--timeout} seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
from typing import Any

import slixmpp
from slixmpp import JID

PLUGINS = ("xep_0030", "xep_0054", "xep_0153", "xep_0012", "xep_0191", "xep_0280", "xep_0199")

# A tiny PNG-looking avatar: the server only hashes bytes.
AVATAR = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


class Client:
    """One logged-in slixmpp client, with every event the scenario waits for as a queue."""

    def __init__(self, jid: str, password: str, args: argparse.Namespace):
        self.xmpp = slixmpp.ClientXMPP(
            jid, password, plugin_config={"feature_mechanisms": {"unencrypted_plain": True}}
        )
        self.xmpp.enable_direct_tls = False
        self.xmpp.enable_starttls = False
        self.xmpp.enable_plaintext = True
        self.xmpp.whitespace_keepalive = False
        for plugin in PLUGINS:
            self.xmpp.register_plugin(plugin)
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()
        self.events: dict[str, asyncio.Queue[Any]] = {}
        for name in ("message", "message_error", "carbon_received", "carbon_sent", "blocked",
                     "unblocked", "vcard_avatar_update", "presence_unavailable"):
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self.events[name] = queue
            self.xmpp.add_event_handler(name, queue.put_nowait)
        self.xmpp.add_event_handler("session_start", self._started)
        for failure in ("failed_auth", "failed_all_auth", "disconnected"):
            self.xmpp.add_event_handler(failure, self._failed(failure))
        self.args = args

    def _started(self, _event: Any) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def _failed(self, reason: str) -> Any:
        def fail(_event: Any) -> None:
            if not self.started.done():
                self.started.set_exception(RuntimeError(reason))

        return fail

    @property
    def jid(self) -> JID:
        return self.xmpp.boundjid

    def plugin(self, name: str) -> Any:
        plugins: Any = self.xmpp.plugin
        return plugins[name]

    async def next(self, event: str, match: Any = lambda _: True, timeout: float = 5.0) -> Any:
        """The next event of that name that C{match}es (others are dropped)."""

        async def find() -> Any:
            while True:
                item = await self.events[event].get()
                if match(item):
                    return item

        return await asyncio.wait_for(find(), timeout)

    def drain(self, event: str) -> None:
        queue = self.events[event]
        while not queue.empty():
            queue.get_nowait()


def send(client: Client, to: str, body: str, ident: str) -> None:
    """A chat message with a chosen id (to match the error that answers it)."""
    message = client.xmpp.make_message(mto=JID(to), mbody=body, mtype="chat")
    message["id"] = ident
    message.send()


async def scenario(args: argparse.Namespace, result: dict[str, Any]) -> None:
    domain = args.domain
    desk = Client(f"alice@{domain}/desk", args.alice_password, args)
    phone = Client(f"alice@{domain}/phone", args.alice_password, args)
    bob = Client(f"bob@{domain}/site", args.bob_password, args)
    clients = (desk, phone, bob)
    try:
        result["stage"] = "login"
        for client in clients:
            client.xmpp.connect(args.host, args.port)
        await asyncio.gather(*(c.started for c in clients))
        for client in clients:
            client.xmpp.send_presence()
        # Everyone has everyone's presence once bob sees both of alice's resources.
        await asyncio.sleep(0.3)

        result["stage"] = "carbons"
        await desk.plugin("xep_0280").enable()
        bob.xmpp.send_message(mto=JID(phone.jid.full), mbody="to the phone", mtype="chat")
        carbon = await desk.next("carbon_received")
        inner = carbon["carbon_received"]
        result["carbons"] = {
            "receivedFrom": str(carbon["from"]),
            "receivedInner": [str(inner["from"]), str(inner["to"]), inner["body"]],
        }
        await phone.next("message", lambda m: m["body"] == "to the phone")
        phone.xmpp.send_message(mto=JID(f"bob@{domain}"), mbody="from the phone", mtype="chat")
        carbon = await desk.next("carbon_sent")
        inner = carbon["carbon_sent"]
        result["carbons"]["sentInner"] = [str(inner["from"]), str(inner["to"]), inner["body"]]
        await bob.next("message", lambda m: m["body"] == "from the phone")

        result["stage"] = "vcard"
        vcard = desk.plugin("xep_0054").make_vcard()
        vcard["FN"] = "Alice Liddell"
        vcard["NICKNAME"] = "alice"
        vcard["ORG"]["ORGNAME"] = "Wonderland"
        vcard["EMAIL"]["USERID"] = "alice@example.org"
        vcard["DESC"] = "Curiouser and curiouser"
        await desk.plugin("xep_0054").publish_vcard(vcard)
        bob.drain("vcard_avatar_update")
        await desk.plugin("xep_0153").set_avatar(avatar=AVATAR, mtype="image/png")
        expected = hashlib.sha1(AVATAR).hexdigest()
        update = await bob.next(
            "vcard_avatar_update",
            lambda p: p["from"].bare == f"alice@{domain}" and p["vcard_temp_update"]["photo"] == expected,
        )
        result["avatar"] = {"hash": update["vcard_temp_update"]["photo"], "expected": expected}
        iq = await bob.plugin("xep_0054").get_vcard(JID(f"alice@{domain}"), cached=False)
        card = iq["vcard_temp"]
        result["vcard"] = {
            "from": str(iq["from"]),
            "FN": card["FN"],
            "NICKNAME": list(card["NICKNAME"]),
            "ORGNAME": card["ORG"]["ORGNAME"],
            "USERID": card["EMAIL"]["USERID"],
            "DESC": card["DESC"],
            "TYPE": card["PHOTO"]["TYPE"],
            "photoMatches": card["PHOTO"]["BINVAL"] == AVATAR,
        }
        try:
            await bob.plugin("xep_0054").get_vcard(JID(f"nobody@{domain}"), cached=False)
            result["vcard"]["unknown"] = "result"
        except slixmpp.exceptions.IqError as e:
            result["vcard"]["unknown"] = e.iq["error"]["condition"]

        result["stage"] = "last"
        iq = await bob.plugin("xep_0012").get_last_activity(JID(f"alice@{domain}"))
        uptime = await bob.plugin("xep_0012").get_last_activity(JID(domain))
        result["last"] = {
            "online": iq["last_activity"]["seconds"],
            "uptime": uptime["last_activity"]["seconds"],
        }

        result["stage"] = "blocking"
        blocking: dict[str, Any] = {"initial": sorted(str(j) for j in await phone.plugin("xep_0191").get_blocked_jids())}
        bob.drain("presence_unavailable")
        await desk.plugin("xep_0191").block(JID(f"bob@{domain}"))
        push = await phone.next("blocked")
        blocking["pushed"] = [str(item["jid"]) for item in push["block"]]
        gone: set[str] = set()
        while len(gone) < 2:  # both of alice's resources
            presence = await bob.next("presence_unavailable", lambda p: p["from"].bare == f"alice@{domain}")
            gone.add(str(presence["from"]))
        blocking["bobSawAliceGo"] = sorted(gone)
        blocking["list"] = sorted(str(j) for j in await desk.plugin("xep_0191").get_blocked_jids())
        send(bob, desk.jid.full, "can you hear me?", "blocked1")
        error = await bob.next("message_error", lambda m: m["id"] == "blocked1")
        blocking["bobGot"] = error["error"]["condition"]
        send(desk, f"bob@{domain}", "shh", "blocked2")
        error = await desk.next("message_error", lambda m: m["id"] == "blocked2")
        blocking["aliceGot"] = error["error"]["condition"]
        blocking["aliceGotBlocked"] = error.xml.find(
            "{jabber:client}error/{urn:xmpp:blocking:errors}blocked") is not None
        await desk.plugin("xep_0191").unblock(JID(f"bob@{domain}"))
        await phone.next("unblocked")
        bob.xmpp.send_message(mto=JID(desk.jid.full), mbody="hello again", mtype="chat")
        await desk.next("message", lambda m: m["body"] == "hello again")
        blocking["afterUnblock"] = "delivered"
        result["blocking"] = blocking

        result["stage"] = "lastOffline"
        for client in (desk, phone):
            client.xmpp.send_presence(ptype="unavailable", pstatus="Down the rabbit hole")
        await bob.next("presence_unavailable", lambda p: p["from"] == phone.jid)
        for client in (desk, phone):
            client.xmpp.disconnect(wait=0.2)
        await asyncio.sleep(1.2)
        iq = await bob.plugin("xep_0012").get_last_activity(JID(f"alice@{domain}"))
        result["lastOffline"] = {
            "seconds": iq["last_activity"]["seconds"],
            "status": iq["last_activity"]["status"],
        }
        result["ok"] = True
        del result["stage"]
    finally:
        for client in clients:
            try:
                client.xmpp.disconnect(wait=0.2)
            except Exception:  # noqa: BLE001, S110 - best effort on the way out
                pass
        await asyncio.sleep(0.2)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False}
    try:
        await asyncio.wait_for(scenario(args, result), args.timeout)
    except TimeoutError:
        result["error"] = "timeout"
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        result["error"] = f"{e.__class__.__name__}: {e}"
    return result


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--alice-password", required=True)
    parser.add_argument("--bob-password", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
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
