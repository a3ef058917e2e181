"""
Tests for the REST door (L{xmppjson.rest}, L{xmppjson.web}): the real resource tree, driven
in memory by C{treq.testing.StubTreq}, over an in-memory SQLite store; plus one end-to-end test
over a real socket on an ephemeral port.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, task
from twisted.trial import unittest
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.helpers import (
    HTTPResponse,
    RestClient,
    makeConfig,
    makeStore,
    realReactor,
    sleep,
    startedStore,
)
from xmppjson.accounts import Accounts
from xmppjson.error import NotFound, StoreUnavailable, Unprocessable, XMPPJSONError
from xmppjson.rest import (
    LOGIN_KEYS,
    OPERATIONS,
    MethodNotAllowed,
    RestResource,
    errorResponse,
    formatTimestamp,
    openAPI,
)
from xmppjson.storage import PROFILE_FIELDS, RosterItem
from xmppjson.web import makeRoot, makeSite

#: The login response of the original web API (webApi.md), keys in order.
SPEC_LOGIN_KEYS = [
    "token", "jid", "full_name", "nick_name", "company", "department", "position", "role",
    "street", "streer_2", "city", "state", "zip_code", "country", "about", "last_seen",
    "presence", "status", "email", "www", "phone", "birthday", "avatar",
]

REPO = Path(__file__).resolve().parent.parent


class RestTestCase(unittest.TestCase):
    """A server's REST resource tree over a fresh in-memory store, time on a L{task.Clock}."""

    startStore = True

    async def asyncSetUp(self, **config: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.cfg = makeConfig(**config)
        if self.startStore:
            self.store = await startedStore(self)
        else:
            self.store = makeStore()
            self.addCleanup(self.store.close)
        self.accounts = Accounts(self.cfg, self.store, self.clock)
        self.client = RestClient(makeRoot(self.cfg, self.accounts, None, self.clock))

    def assertError(self, response: HTTPResponse, code: int, condition: str) -> dict[str, Any]:
        """The response is a JSON error with this status and condition."""
        self.assertEqual(response.code, code, response.body)
        self.assertEqual(response.header("content-type"), "application/json; charset=utf-8")
        body = response.json()
        self.assertEqual(body["error"], condition)
        self.assertIsInstance(body["description"], str)
        self.assertTrue(body["description"])
        return body

    async def register(self, jid: str = "szymon", password: str = "123456") -> HTTPResponse:
        return await self.client.post("/users", json={"jid": jid, "password": password})

    async def login(self, jid: str = "szymon", password: str = "123456") -> str:
        response = await self.client.post("/login", json={"jid": jid, "password": password})
        self.assertEqual(response.code, 200, response.body)
        return response.json()["token"]


class UsersTests(RestTestCase):
    """C{GET /users/{localpart}} and C{POST /users}."""

    async def test_register(self) -> None:
        await self.asyncSetUp()
        response = await self.register("szymon", "123456")
        self.assertEqual(response.code, 201)
        self.assertEqual(response.json(), {"jid": "szymon@localhost"})
        self.assertEqual(response.header("access-control-allow-origin"), "*")

    async def test_check(self) -> None:
        await self.asyncSetUp()
        response = await self.client.get("/users/szymon")
        self.assertError(response, 404, "item-not-found")
        await self.register("szymon")
        response = await self.client.get("/users/szymon")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json(), {"jid": "szymon@localhost"})
        # HEAD answers like GET, without a body
        response = await self.client.request("HEAD", "/users/szymon")
        self.assertEqual((response.code, response.body), (200, b""))
        # an invalid name cannot exist
        self.assertError(await self.client.get("/users/a%20b"), 404, "item-not-found")

    async def test_nodeprepEquivalence(self) -> None:
        """C{Ewa} registers as C{ewa}; C{ewa} and C{EWA} are the same user."""
        await self.asyncSetUp()
        response = await self.register("Ewa")
        self.assertEqual((response.code, response.json()), (201, {"jid": "ewa@localhost"}))
        for name in ("ewa", "EWA", "ewa@localhost"):
            self.assertError(await self.register(name, "abcdef"), 409, "conflict")
        for name in ("ewa", "EWA", "Ewa", "ewa@localhost", "%45wa"):
            response = await self.client.get(f"/users/{name}")
            self.assertEqual(response.json(), {"jid": "ewa@localhost"})
        # the first password still holds
        await self.login("EWA", "123456")

    async def test_unicodeLocalpart(self) -> None:
        await self.asyncSetUp()
        response = await self.register("Żaba")
        self.assertEqual(response.json(), {"jid": "żaba@localhost"})
        response = await self.client.get("/users/%C5%BBABA")
        self.assertEqual(response.json(), {"jid": "żaba@localhost"})

    async def test_invalid(self) -> None:
        """422 lists every invalid field."""
        await self.asyncSetUp()
        body = self.assertError(await self.register("a b", "123"), 422, "not-acceptable")
        self.assertEqual([e["field"] for e in body["errors"]], ["jid", "password"])
        for e in body["errors"]:
            self.assertEqual(set(e), {"field", "message"})
        body = self.assertError(await self.register("", "123456"), 422, "not-acceptable")
        self.assertEqual(body["errors"][0]["field"], "jid")
        body = self.assertError(await self.register("x" * 1024, "123456"), 422, "not-acceptable")
        body = self.assertError(await self.register("ok", "12345"), 422, "not-acceptable")
        self.assertEqual(body["errors"], [{"field": "password",
                                           "message": "must be at least 6 characters"}])
        self.assertError(await self.register("ok@example.org", "123456"), 422, "not-acceptable")
        self.assertError(await self.client.get("/users/ok"), 404, "item-not-found")

    async def test_malformed(self) -> None:
        """400 for bodies that are not JSON, not an object, or with fields missing or mistyped."""
        await self.asyncSetUp()
        json_ = {"Content-Type": "application/json"}
        for raw in (b"{", b"", b"   ", b"[]", b'"szymon"', b"\xff\xfe", b'{"jid": NaN}',
                    b'{"jid": "szymon"}', b'{"password": "123456"}',
                    b'{"jid": 1, "password": "123456"}', b'{"jid": "a", "password": null}',
                    b'{"jid": "\\ud800", "password": "123456"}'):
            response = await self.client.post("/users", data=raw, headers=json_)
            self.assertError(response, 400, "bad-request")
        self.assertError(await self.client.get("/users/a"), 404, "item-not-found")

    async def test_registrationClosed(self) -> None:
        await self.asyncSetUp(registration="closed")
        self.assertError(await self.register(), 403, "forbidden")


class LoginTests(RestTestCase):
    """C{POST /login}: the spec's response, byte-compatible; tokens."""

    async def test_responseShape(self) -> None:
        """C{token}, then every key of the spec's example, in that order."""
        await self.asyncSetUp()
        await self.register("szymon")
        response = await self.client.post("/login", json={"jid": "szymon",
                                                           "password": "123456"})
        self.assertEqual(response.code, 200)
        body = json.loads(response.body, object_pairs_hook=lambda pairs: pairs)
        self.assertEqual([key for key, _ in body], SPEC_LOGIN_KEYS)
        values = dict(body)
        self.assertRegex(values["token"], r"^[A-Za-z0-9_-]{48}$")
        self.assertEqual(values["jid"], "szymon@localhost/")
        for key in PROFILE_FIELDS:
            self.assertIsNone(values[key])
        self.assertIsNone(values["last_seen"])
        self.assertEqual((values["presence"], values["status"]), ("", ""))
        self.assertEqual(response.header("cache-control"), "no-store")
        # the raw bytes start exactly as in the spec
        self.assertTrue(response.body.startswith(b'{"token": "'))
        self.assertIn(b'"jid": "szymon@localhost/", "full_name": null', response.body)
        self.assertEqual(tuple(SPEC_LOGIN_KEYS[1:]), LOGIN_KEYS)

    async def test_liveValues(self) -> None:
        """last_seen is ISO 8601 UTC with microseconds and Z; presence/status come from the store."""
        await self.asyncSetUp()
        await self.register("szymon")
        seen = datetime.datetime(2018, 1, 27, 12, 11, 11, 508393,
                                 tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
        await self.store.setLastPresence("szymon", seen, "away", "Mam na imię Szymon")
        await self.store.updateProfile("szymon", {"full_name": "Szymon S", "streer_2": "b"})
        response = await self.client.post("/login", json={"jid": "szymon",
                                                           "password": "123456"})
        body = response.json()
        self.assertEqual(body["last_seen"], "2018-01-27T11:11:11.508393Z")
        self.assertEqual(body["presence"], "away")
        self.assertEqual(body["status"], "Mam na imię Szymon")
        self.assertEqual(body["full_name"], "Szymon S")
        self.assertEqual(body["streer_2"], "b")

    async def test_bareJID(self) -> None:
        await self.asyncSetUp()
        await self.register("szymon")
        await self.login("szymon@localhost")
        await self.login("Szymon@LocalHost/")

    async def test_refused(self) -> None:
        await self.asyncSetUp()
        await self.register("szymon")
        for jid, password in (("szymon", "1234567"), ("nobody", "123456"),
                              ("szymon@example.org", "123456")):
            response = await self.client.post("/login", json={"jid": jid, "password": password})
            self.assertError(response, 401, "not-authorized")
            self.assertEqual(response.header("www-authenticate"), 'Bearer realm="xmppjson"')
        response = await self.client.post("/login", json={"jid": "szymon"})
        self.assertError(response, 400, "bad-request")

    async def test_tokenExpiry(self) -> None:
        await self.asyncSetUp(tokenTTL=3600)
        await self.register("szymon")
        token = await self.login()
        self.assertEqual((await self.client.get("/me", token=token)).code, 200)
        self.clock.advance(3599)
        self.assertEqual((await self.client.get("/me", token=token)).code, 200)
        self.clock.advance(2)
        self.assertError(await self.client.get("/me", token=token), 401, "not-authorized")

    async def test_severalTokensAndLogout(self) -> None:
        """Each login adds a token; logout revokes only the token presented."""
        await self.asyncSetUp()
        await self.register("szymon")
        phone, laptop = await self.login(), await self.login()
        self.assertNotEqual(phone, laptop)
        response = await self.client.post("/logout", token=phone)
        self.assertEqual((response.code, response.body), (204, b""))
        self.assertError(await self.client.get("/me", token=phone), 401, "not-authorized")
        self.assertError(await self.client.post("/logout", token=phone), 401, "not-authorized")
        self.assertEqual((await self.client.get("/me", token=laptop)).code, 200)
        response = await self.client.post(f"/logout?token={laptop}")
        self.assertEqual(response.code, 204)
        self.assertError(await self.client.get(f"/me?token={laptop}"), 401, "not-authorized")
        self.assertError(await self.client.post("/logout"), 401, "not-authorized")


class ProfileTests(RestTestCase):
    """C{GET/PATCH /me}, C{PATCH /users/{localpart}}, C{POST /me/password}, C{/me/roster}."""

    async def asyncSetUp(self, **config: Any) -> None:
        await super().asyncSetUp(**config)
        await self.register("szymon")
        await self.register("alicja")
        self.token = await self.login()

    async def test_me(self) -> None:
        await self.asyncSetUp()
        for response in (await self.client.get("/me", token=self.token),
                         await self.client.get(f"/me?token={self.token}")):
            self.assertEqual(response.code, 200)
            body = json.loads(response.body, object_pairs_hook=lambda p: p)
            self.assertEqual([k for k, _ in body], list(LOGIN_KEYS))
            self.assertEqual(dict(body)["jid"], "szymon@localhost")

    async def test_tokenRequired(self) -> None:
        await self.asyncSetUp()
        for headers in ({}, {"Authorization": "Basic c3p5bW9uOjEyMzQ1Ng=="},
                        {"Authorization": "Bearer"}, {"Authorization": "Bearer nonsense"}):
            response = await self.client.get("/me", headers=headers)
            self.assertError(response, 401, "not-authorized")
            self.assertEqual(response.header("www-authenticate"), 'Bearer realm="xmppjson"')
        response = await self.client.patch("/me", json={"city": "Kraków"})
        self.assertError(response, 401, "not-authorized")

    async def test_patch(self) -> None:
        """Given fields change, null clears, the rest stay; by /me or /users/{own}."""
        await self.asyncSetUp()
        response = await self.client.patch(
            "/me", json={"full_name": "Szymon S", "city": "Kraków"}, token=self.token)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["city"], "Kraków")
        response = await self.client.patch(
            "/users/Szymon", json={"city": None, "streer_2": "ul. Długa"}, token=self.token)
        self.assertEqual(response.code, 200)
        body = response.json()
        self.assertEqual((body["full_name"], body["city"], body["streer_2"]),
                         ("Szymon S", None, "ul. Długa"))
        self.assertEqual((await self.client.get("/me", token=self.token)).json(), body)
        token = await self.login()
        login = (await self.client.post("/login", json={"jid": "szymon",
                                                        "password": "123456"})).json()
        self.assertEqual(login["full_name"], "Szymon S")
        self.assertEqual((await self.client.patch("/me", json={}, token=token)).json(), body)

    async def test_patchOthers(self) -> None:
        await self.asyncSetUp()
        for path in ("/users/alicja", "/users/nobody", "/users/a%20b"):
            response = await self.client.patch(path, json={"city": "X"}, token=self.token)
            self.assertError(response, 403, "forbidden")
        token = await self.login("alicja")
        self.assertIsNone((await self.client.get("/me", token=token)).json()["city"])

    async def test_patchInvalid(self) -> None:
        """Unknown or read-only keys and values that are not strings or null: 422."""
        await self.asyncSetUp()
        response = await self.client.patch(
            "/me", json={"city": 1, "nope": "x", "last_seen": None, "about": ["a"],
                         "email": "x@y"},
            token=self.token)
        body = self.assertError(response, 422, "not-acceptable")
        self.assertEqual({e["field"]: e["message"] for e in body["errors"]}, {
            "city": "must be a string or null",
            "nope": "is not a profile field",
            "last_seen": "is read-only",
            "about": "must be a string or null",
        })
        # nothing was applied
        self.assertIsNone((await self.client.get("/me", token=self.token)).json()["email"])
        response = await self.client.patch("/me", json=["city"], token=self.token)
        self.assertError(response, 400, "bad-request")

    async def test_password(self) -> None:
        await self.asyncSetUp()
        path = "/me/password"
        response = await self.client.post(
            path, json={"password": "abcdefg", "old_password": "wrong!"}, token=self.token)
        self.assertError(response, 403, "forbidden")
        response = await self.client.post(path, json={"password": "abc",
                                                      "old_password": "123456"},
                                          token=self.token)
        self.assertError(response, 422, "not-acceptable")
        response = await self.client.post(path, json={"password": "abcdefg"}, token=self.token)
        self.assertError(response, 400, "bad-request")
        response = await self.client.post(
            path, json={"password": "abcdefg", "old_password": "123456"}, token=self.token)
        self.assertEqual((response.code, response.body), (204, b""))
        # the token stays valid, the new password works, the old one no longer does
        self.assertEqual((await self.client.get("/me", token=self.token)).code, 200)
        await self.login("szymon", "abcdefg")
        response = await self.client.post("/login", json={"jid": "szymon",
                                                           "password": "123456"})
        self.assertError(response, 401, "not-authorized")

    async def test_roster(self) -> None:
        await self.asyncSetUp()
        await self.store.setRosterItem("szymon", RosterItem(
            jid="alicja@localhost", name="Alicja", subscription="both", groups=["Friends"]))
        await self.store.setRosterItem("szymon", RosterItem(
            jid="adam@localhost", subscription="none", askOut=True))
        await self.store.setRosterItem("szymon", RosterItem(
            jid="spam@localhost", pendingIn=True, inRoster=False))
        response = await self.client.get("/me/roster", token=self.token)
        self.assertEqual(response.code, 200)
        items = sorted(response.json()["items"], key=lambda i: i["jid"])
        self.assertEqual(items, [
            {"jid": "adam@localhost", "name": None, "subscription": "none", "ask": "subscribe",
             "groups": []},
            {"jid": "alicja@localhost", "name": "Alicja", "subscription": "both", "ask": None,
             "groups": ["Friends"]},
        ])


class HTTPTests(RestTestCase):
    """Routing, methods, media types, sizes, CORS, errors."""

    async def test_unknownPath(self) -> None:
        await self.asyncSetUp()
        for path in ("/nope", "/users/a/b", "/me/nope", "/login/x", "/users//x"):
            self.assertError(await self.client.get(path), 404, "item-not-found")
        self.assertError(await self.client.post("/nope", json={}), 404, "item-not-found")

    async def test_methodNotAllowed(self) -> None:
        await self.asyncSetUp()
        for method, path, allow in (
            ("GET", "/login", "POST, OPTIONS"),
            ("DELETE", "/users/szymon", "GET, HEAD, PATCH, OPTIONS"),
            ("PUT", "/me", "GET, HEAD, PATCH, OPTIONS"),
            ("POST", "/health", "GET, HEAD, OPTIONS"),
        ):
            response = await self.client.request(method, path)
            self.assertError(response, 405, "not-allowed")
            self.assertEqual(response.header("allow"), allow)

    async def test_trailingSlash(self) -> None:
        await self.asyncSetUp()
        await self.register("szymon")
        self.assertEqual((await self.client.get("/users/szymon/")).code, 200)
        self.assertEqual((await self.client.get("/health/")).code, 200)

    async def test_mediaType(self) -> None:
        """JSON with or without a UTF-8 charset, or no Content-Type: accepted.  Others: 415."""
        await self.asyncSetUp()
        body = json.dumps({"jid": "a1", "password": "123456"}).encode()
        for n, contentType in enumerate(("application/json", "application/json; charset=utf-8",
                                         "Application/JSON;charset=UTF-8", None)):
            headers = {"Content-Type": contentType} if contentType else {}
            data = body.replace(b"a1", f"a{n}".encode())
            response = await self.client.post("/users", data=data, headers=headers)
            self.assertEqual(response.code, 201, (contentType, response.body))
        for contentType in ("text/plain", "application/x-www-form-urlencoded",
                            "application/json; charset=latin-1", "text/json"):
            response = await self.client.post("/users", data=body.replace(b"a1", b"z9"),
                                              headers={"Content-Type": contentType})
            self.assertError(response, 415, "unsupported-media-type")
        self.assertError(await self.client.get("/users/z9"), 404, "item-not-found")

    async def test_tooLarge(self) -> None:
        """A body over maxHTTPBody is refused with 413 before anything else."""
        await self.asyncSetUp(maxHTTPBody=1024)
        big = {"jid": "szymon", "password": "x" * 2000}
        self.assertError(await self.client.post("/users", json=big), 413, "payload-too-large")
        self.assertError(await self.client.post("/users", data=b"x" * 5000,
                                                headers={"Content-Type": "text/plain"}),
                         413, "payload-too-large")
        self.assertError(await self.client.patch("/me", data=b"x" * 5000), 413,
                         "payload-too-large")
        self.assertError(await self.client.get("/users/szymon"), 404, "item-not-found")

    async def test_defaultLimit(self) -> None:
        """The default limit is 64 KiB."""
        await self.asyncSetUp()
        self.assertEqual(self.cfg.maxHTTPBody, 64 * 1024)
        self.assertError(await self.client.post("/users", data=b" " * (64 * 1024 + 1)),
                         413, "payload-too-large")
        self.assertError(await self.client.post("/users", data=b" " * (64 * 1024)),
                         400, "bad-request")

    async def test_cors(self) -> None:
        """Preflight is answered 204 with the allowed methods and headers."""
        await self.asyncSetUp()
        response = await self.client.request("OPTIONS", "/me", headers={
            "Origin": "https://chat.example.org",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type",
        })
        self.assertEqual((response.code, response.body), (204, b""))
        self.assertEqual(response.header("access-control-allow-origin"), "*")
        self.assertEqual(response.header("access-control-allow-methods"),
                         "GET, HEAD, PATCH, OPTIONS")
        allowed = response.header("access-control-allow-headers").lower()
        self.assertIn("authorization", allowed)
        self.assertIn("content-type", allowed)
        self.assertError(await self.client.request("OPTIONS", "/nope"), 404, "item-not-found")
        # and on every answer, errors included
        for response in (await self.client.get("/health"), await self.client.get("/nope")):
            self.assertEqual(response.header("access-control-allow-origin"), "*")

    async def test_internalError(self) -> None:
        """An unexpected exception is a 500 JSON error; the traceback is only logged."""
        await self.asyncSetUp()

        def broken(localpart: str) -> Any:
            raise ZeroDivisionError("secret detail")

        self.patch(self.store, "userExists", broken)
        response = await self.client.get("/users/szymon")
        body = self.assertError(response, 500, "internal-server-error")
        self.assertNotIn(b"secret", response.body)
        self.assertNotIn(b"Traceback", response.body)
        self.assertEqual(body["description"], "internal server error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    async def test_clientGoneAway(self) -> None:
        """A client that disconnects before the answer is ready: nothing raises or is logged."""
        await self.asyncSetUp()
        gate: defer.Deferred[bool] = defer.Deferred()
        self.patch(self.store, "userExists", lambda localpart: gate)
        from twisted.web.test.requesthelper import DummyRequest

        request = DummyRequest([b"users", b"szymon"])
        request.path = b"/users/szymon"
        request.method = b"GET"
        resource = RestResource(self.cfg, self.accounts, None, self.clock)
        resource.render(request)
        request.processingFailed(Exception("connection lost"))  # the client is gone
        gate.callback(True)
        self.assertEqual(request.written, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_errorMapping(self) -> None:
        """The one mapping: our exceptions keep condition and status; others are 500."""
        self.assertEqual(errorResponse(NotFound("x"))[:2],
                         (404, {"error": "item-not-found", "description": "x"}))
        status, body, headers = errorResponse(MethodNotAllowed("PUT", ["GET", "OPTIONS"]))
        self.assertEqual((status, headers["Allow"]), (405, "GET, OPTIONS"))
        status, body, headers = errorResponse(StoreUnavailable())
        self.assertEqual((status, body["error"], headers["Retry-After"]),
                         (503, "service-unavailable", "5"))
        status, body, _ = errorResponse(Unprocessable([{"field": "jid", "message": "bad"}]))
        self.assertEqual((status, body["errors"]), (422, [{"field": "jid", "message": "bad"}]))
        status, body, _ = errorResponse(KeyError("secret"))
        self.assertEqual((status, body),
                         (500, {"error": "internal-server-error",
                                "description": "internal server error"}))

    def test_formatTimestamp(self) -> None:
        self.assertIsNone(formatTimestamp(None))
        self.assertEqual(formatTimestamp(datetime.datetime(2018, 1, 27, 11, 11, 11)),
                         "2018-01-27T11:11:11.000000Z")


class StoreDownTests(RestTestCase):
    """A store that cannot serve: 503 with JSON, then recovery once it can."""

    startStore = False

    async def test_downThenUp(self) -> None:
        await self.asyncSetUp()
        response = await self.client.get("/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.json()["status"], "unavailable")
        self.assertEqual(response.json()["store"], "unavailable")
        self.assertEqual(response.json()["error"], "service-unavailable")
        for response in (await self.register(),
                         await self.client.get("/users/szymon"),
                         await self.client.post("/login", json={"jid": "szymon",
                                                                "password": "123456"}),
                         await self.client.get("/me", token="x" * 48)):
            self.assertError(response, 503, "service-unavailable")
            self.assertEqual(response.header("retry-after"), "5")
        await self.store.start()
        self.assertEqual((await self.client.get("/health")).json(),
                         {"status": "ok", "store": "ok"})
        self.assertEqual((await self.register()).code, 201)
        await self.login()

    async def test_closed(self) -> None:
        await self.asyncSetUp()
        await self.store.start()
        await self.register()
        await self.store.close()
        self.assertEqual((await self.client.get("/health")).code, 503)
        self.assertError(await self.client.get("/users/szymon"), 503, "service-unavailable")

    async def test_healthTimeout(self) -> None:
        """A database that does not answer is unavailable after HEALTH_TIMEOUT seconds."""
        await self.asyncSetUp()
        self.patch(self.store, "ping", lambda: defer.Deferred())
        d = defer.Deferred.fromCoroutine(self.client.get("/health"))
        await sleep(0.01)
        self.assertFalse(d.called)
        self.clock.advance(6)
        response = await d
        self.assertEqual(response.code, 503)


class OpenAPITests(RestTestCase):
    """C{GET /openapi.json} describes every endpoint; C{docs/openapi.json} is that document."""

    async def test_served(self) -> None:
        await self.asyncSetUp()
        response = await self.client.get("/openapi.json")
        self.assertEqual(response.code, 200)
        document = response.json()
        self.assertEqual(document["openapi"], "3.1.0")
        described = {(method.upper(), path) for path, ops in document["paths"].items()
                     for method in ops}
        self.assertEqual(described, {(op.method, op.path) for op in OPERATIONS})
        self.assertEqual(
            {(m, p) for m, p in described},
            {("GET", "/users/{localpart}"), ("PATCH", "/users/{localpart}"), ("POST", "/users"),
             ("POST", "/login"), ("POST", "/logout"), ("GET", "/me"), ("PATCH", "/me"),
             ("POST", "/me/password"), ("GET", "/me/roster"), ("GET", "/me/history"),
             ("GET", "/health"), ("GET", "/openapi.json")})
        schemas = document["components"]["schemas"]
        self.assertEqual(list(schemas["Login"]["properties"]), SPEC_LOGIN_KEYS)
        # every reference resolves
        for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', response.body.decode()):
            self.assertIn(ref, schemas)
        for ops in document["paths"].values():
            for op in ops.values():
                self.assertIn("500", op["responses"])
                for status in op["responses"]:
                    self.assertTrue(100 <= int(status) < 600)

    def test_validOpenAPI(self) -> None:
        """The document is valid OpenAPI 3.1."""
        from openapi_spec_validator import validate

        validate(openAPI())

    def assertDocumented(self, method: str, template: str, response: HTTPResponse) -> None:
        """The response's status is documented for the operation, and its body fits."""
        from openapi_schema_validator import OAS31Validator

        document = openAPI()
        documented = document["paths"][template][method.lower()]["responses"]
        self.assertIn(str(response.code), documented, (method, template))
        content = documented[str(response.code)].get("content")
        if content is None:
            self.assertEqual(response.body, b"")
            return
        schema = dict(content["application/json"]["schema"])
        schema["components"] = document["components"]
        OAS31Validator(schema).validate(response.json())

    async def test_responsesMatchDocument(self) -> None:
        """Real answers of every endpoint fit the schemas the document gives for them."""
        await self.asyncSetUp()
        c = self.client
        self.assertDocumented("POST", "/users", await self.register())
        self.assertDocumented("POST", "/users", await self.register())  # 409
        self.assertDocumented("POST", "/users", await self.register("a b", "1"))  # 422
        self.assertDocumented("POST", "/users", await c.post("/users", data=b"{"))  # 400
        self.assertDocumented("GET", "/users/{localpart}", await c.get("/users/szymon"))
        self.assertDocumented("GET", "/users/{localpart}", await c.get("/users/nobody"))
        login = await c.post("/login", json={"jid": "szymon", "password": "123456"})
        self.assertDocumented("POST", "/login", login)
        self.assertDocumented("POST", "/login", await c.post("/login", json={
            "jid": "szymon", "password": "wrong!"}))
        token = login.json()["token"]
        self.assertDocumented("GET", "/me", await c.get("/me", token=token))
        self.assertDocumented("PATCH", "/me", await c.patch("/me", json={"city": "X"},
                                                            token=token))
        self.assertDocumented("PATCH", "/me", await c.patch("/me", json={"x": 1}, token=token))
        self.assertDocumented("PATCH", "/users/{localpart}", await c.patch(
            "/users/other", json={"city": "X"}, token=token))
        self.assertDocumented("GET", "/me/roster", await c.get("/me/roster", token=token))
        self.assertDocumented("POST", "/me/password", await c.post("/me/password", json={
            "password": "abcdefg", "old_password": "123456"}, token=token))
        self.assertDocumented("GET", "/health", await c.get("/health"))
        self.assertDocumented("POST", "/logout", await c.post("/logout", token=token))
        self.assertDocumented("GET", "/me", await c.get("/me", token=token))  # 401
        self.assertDocumented("POST", "/users", await c.post("/users", data=b"x" * 70000))

    def test_docsCurrent(self) -> None:
        """docs/openapi.json is the generated document (regenerate: see docs/rest.md)."""
        onDisk = json.loads((REPO / "docs" / "openapi.json").read_text(encoding="utf-8"))
        self.assertEqual(onDisk, openAPI(), "docs/openapi.json is stale; see docs/rest.md")


class MountTests(RestTestCase):
    """What shares the Site with REST: the WebSocket at /stream, the browser client at /app/."""

    async def test_stream(self) -> None:
        await self.asyncSetUp()
        response = await self.client.get("/stream")
        self.assertEqual(response.code, 426)
        self.assertEqual(response.json()["error"], "upgrade-required")

    async def test_webClient(self) -> None:
        await self.asyncSetUp()
        response = await self.client.get("/")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.header("location"), "app/")
        response = await self.client.get("/app/")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.header("content-type").startswith("text/html"))
        self.assertIn(b"<html", response.body.lower())
        # REST is untouched next to it
        self.assertError(await self.client.get("/users/app"), 404, "item-not-found")


@implementer(IBodyProducer)
class _ChunkedBody:
    """A request body of unknown length (sent chunked), written all at once."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        for chunk in self.chunks:
            consumer.write(chunk)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class EndToEndTests(unittest.TestCase):
    """
    The real Site on a real socket (127.0.0.1, an ephemeral port) with real treq.  The only test
    that uses the real reactor for networking.
    """

    async def test_registerAndLogin(self) -> None:
        import treq

        reactor = realReactor()
        config = makeConfig(web="tcp:0:interface=127.0.0.1", maxHTTPBody=4096)
        store = await startedStore(self)
        accounts = Accounts(config, store, reactor)
        site = makeSite(config, accounts, None, reactor)
        port = await endpoints.serverFromString(reactor, config.web).listen(site)
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"

        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.post(f"{base}/users", json={"jid": "Szymon", "password": "123456"},
                                   pool=pool)
        self.assertEqual(response.code, 201)
        self.assertEqual(await response.json(), {"jid": "szymon@localhost"})
        response = await treq.post(f"{base}/login", json={"jid": "szymon", "password": "123456"},
                                   pool=pool)
        self.assertEqual(response.code, 200)
        body = json.loads(await response.text(), object_pairs_hook=lambda p: p)
        self.assertEqual([k for k, _ in body], SPEC_LOGIN_KEYS)
        token = dict(body)["token"]
        response = await treq.get(f"{base}/me", headers={"Authorization": f"Bearer {token}"},
                                  pool=pool)
        self.assertEqual((await response.json())["jid"], "szymon@localhost")
        # a body over the limit, streamed in chunks without Content-Length: 413, not buffered
        response = await treq.post(f"{base}/users", data=_ChunkedBody([b"x" * 1000] * 10),
                                   headers={"Content-Type": "application/json"}, pool=pool)
        self.assertEqual(response.code, 413)
        self.assertEqual((await response.json())["error"], "payload-too-large")

    def test_siteBoundsBodies(self) -> None:
        """The Site's requests stop buffering past maxHTTPBody."""
        config = makeConfig(maxHTTPBody=10)
        site = makeSite(config, Accounts(config, None, task.Clock()), None, task.Clock())
        self.assertEqual(site.maxBody, 10)
        self.assertFalse(site.displayTracebacks)
        from twisted.web.test.requesthelper import DummyChannel

        channel = DummyChannel()
        channel.site = site
        request = site.requestFactory(channel)
        request.gotLength(None)
        request.handleContentChunk(b"x" * 8)
        self.assertFalse(request.bodyTooLarge)
        request.handleContentChunk(b"x" * 8)
        self.assertTrue(request.bodyTooLarge)
        request.content.seek(0)
        self.assertEqual(request.content.read(), b"")
        request = site.requestFactory(channel)
        request.gotLength(11)
        self.assertTrue(request.bodyTooLarge)


class AccessLogTests(unittest.TestCase):
    """Tokens never reach the access log."""

    def test_tokenRedacted(self) -> None:
        from twisted.web.test.requesthelper import DummyRequest

        from xmppjson.web import redactingLogFormatter

        config = makeConfig()
        site = makeSite(config, Accounts(config, None, task.Clock()), None, task.Clock())
        self.assertIs(site._logFormatter, redactingLogFormatter)
        request = DummyRequest([b"me"])
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 17
        for uri, shown in ((b"/me?token=s3cr3t-_x&a=1", "/me?token=<redacted>&a=1"),
                           (b"/stream?v=1&token=s3cr3t", "/stream?v=1&token=<redacted>"),
                           (b"/users/token=x", "/users/token=x")):
            request.uri = uri
            line = site._logFormatter("[now]", request)
            self.assertIn(f'"GET {shown} HTTP/1.1" 200 17', line)
            self.assertNotIn("s3cr3t", line)


class ErrorLadderTests(unittest.TestCase):
    """Statuses of the HTTP-only conditions used by the REST door."""

    def test_statuses(self) -> None:
        from xmppjson.rest import PayloadTooLarge, UnsupportedMediaType

        self.assertEqual(PayloadTooLarge("x").httpStatus, 413)
        self.assertEqual(UnsupportedMediaType("x").httpStatus, 415)
        self.assertEqual(MethodNotAllowed("PUT", ["GET"]).httpStatus, 405)
        self.assertIsInstance(MethodNotAllowed("PUT", ["GET"]), XMPPJSONError)
