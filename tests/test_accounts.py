"""
Tests for L{xmppjson.accounts} and L{xmppjson.scram}: names, passwords and their SCRAM keys,
login tokens, against the embedded store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scramp import ScramClient, ScramException, ScramMechanism
from scramp.utils import saslprep
from twisted.internet import task
from twisted.trial import unittest
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from tests.helpers import makeConfig, makeStore, realReactor, startedStore
from xmppjson import scram
from xmppjson.accounts import (
    MAX_TOKEN_LENGTH,
    PURGE_INTERVAL,
    Accounts,
    hashToken,
    saslprepPassword,
)
from xmppjson.error import (
    Conflict,
    Forbidden,
    NotAuthorized,
    StoreUnavailable,
    Unprocessable,
)
from xmppjson.storage import ScramKeys, UnknownUser


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


class ScramDerivationTests(unittest.TestCase):
    """
    L{xmppjson.scram} against the published exchanges of RFC 5802 (SCRAM-SHA-1) and RFC 7677
    (SCRAM-SHA-256): keys derived from C{"pencil"} must produce the client proof and server
    signature printed there.
    """

    def _checkExchange(
        self,
        mechanism: str,
        salt: str,
        clientFirstBare: str,
        serverFirst: str,
        clientFinalWithoutProof: str,
        proof: str,
        verifier: str,
    ) -> None:
        keys = scram.deriveKeys(mechanism, "pencil", 4096, salt=_b64(salt))
        hashName = scram.MECHANISMS[mechanism]
        salted = scram.saltedPassword(mechanism, "pencil", _b64(salt), 4096)
        clientKey = scram.clientKey(mechanism, salted)
        authMessage = f"{clientFirstBare},{serverFirst},{clientFinalWithoutProof}".encode()
        clientSignature = hmac.digest(keys.storedKey, authMessage, hashName)
        clientProof = bytes(a ^ b for a, b in zip(clientKey, clientSignature))
        self.assertEqual(base64.b64encode(clientProof).decode(), proof)
        serverSignature = hmac.digest(keys.serverKey, authMessage, hashName)
        self.assertEqual(base64.b64encode(serverSignature).decode(), verifier)
        self.assertEqual(keys.iterations, 4096)
        self.assertEqual(keys.salt, _b64(salt))

    def test_sha1RFC5802(self) -> None:
        nonce = "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j"
        self._checkExchange(
            "SCRAM-SHA-1",
            "QSXCR+Q6sek8bf92",
            "n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            f"r={nonce},s=QSXCR+Q6sek8bf92,i=4096",
            f"c=biws,r={nonce}",
            "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        )

    def test_sha256RFC7677(self) -> None:
        nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        self._checkExchange(
            "SCRAM-SHA-256",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "n=user,r=rOprNGfwEbeRWgbNEkqO",
            f"r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            f"c=biws,r={nonce}",
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        )

    def test_sameAsScramp(self) -> None:
        """For a given salt and count, the keys are the ones scramp computes."""
        salt = b"0123456789abcdef"
        for mechanism in scram.MECHANISMS:
            ours = scram.deriveKeys(mechanism, "correct horse", 4096, salt=salt)
            theirs = ScramMechanism(mechanism).make_auth_info("correct horse", 4096, salt)
            self.assertEqual(
                (ours.salt, ours.storedKey, ours.serverKey, ours.iterations), theirs
            )

    def test_freshSalts(self) -> None:
        """Each mechanism gets its own random salt of SALT_LENGTH bytes."""
        first = scram.makeCredentials("secret", 16)
        second = scram.makeCredentials("secret", 16)
        self.assertEqual(set(first.keys), {"SCRAM-SHA-1", "SCRAM-SHA-256"})
        salts = [k.salt for k in first.keys.values()] + [k.salt for k in second.keys.values()]
        self.assertEqual(len(set(salts)), 4)
        self.assertTrue(all(len(s) == scram.SALT_LENGTH for s in salts))

    def test_verify(self) -> None:
        for mechanism in scram.MECHANISMS:
            keys = scram.deriveKeys(mechanism, "secret", 32)
            self.assertTrue(scram.verifyPassword(mechanism, keys, "secret"))
            self.assertFalse(scram.verifyPassword(mechanism, keys, "Secret"))

    def test_pbkdf2SameAsHashlib(self) -> None:
        """
        Whichever PBKDF2 implementation is in use (C{cryptography}'s when installed), it
        computes exactly what C{hashlib.pbkdf2_hmac} computes.
        """
        cases = [("", b"", 1), ("pencil", b"salt", 2), ("p\u00e9ncil " * 40, b"\x00" * 16, 4096)]
        for mechanism, hashName in scram.MECHANISMS.items():
            for password, salt, iterations in cases:
                self.assertEqual(
                    scram.saltedPassword(mechanism, password, salt, iterations),
                    hashlib.pbkdf2_hmac(hashName, password.encode("utf-8"), salt, iterations),
                )

    def test_pbkdf2WithoutCryptography(self) -> None:
        """Without C{cryptography}, PBKDF2 comes from C{hashlib}."""
        name = "cryptography.hazmat.primitives.kdf.pbkdf2"
        saved = sys.modules.get(name)
        sys.modules[name] = None  # type: ignore[assignment]
        try:
            self.assertIsNone(scram._cryptographyPBKDF2())
        finally:
            if saved is None:
                del sys.modules[name]
            else:
                sys.modules[name] = saved

    def test_pbkdf2RefusedHash(self) -> None:
        """A C{cryptography} that refuses a hash (a FIPS build and SHA-1) is not used."""
        from cryptography.hazmat.primitives.kdf import pbkdf2

        class Refusing:
            def __init__(self, *args: Any) -> None:
                raise ValueError("not in FIPS mode")

        self.patch(pbkdf2, "PBKDF2HMAC", Refusing)
        self.assertIsNone(scram._cryptographyPBKDF2())

    def test_unknownMechanism(self) -> None:
        self.assertRaises(ValueError, scram.deriveKeys, "SCRAM-MD5", "x", 1)
        self.assertRaises(ValueError, scram.deriveKeys, "SCRAM-SHA-1", "x", 0)


class NameTests(unittest.TestCase):
    """Localparts: nodeprep and JIDs of this domain."""

    def setUp(self) -> None:
        self.accounts = Accounts(makeConfig(), store=None, reactor=task.Clock())

    def assertField(self, exc: Unprocessable, field: str) -> None:
        self.assertEqual([e["field"] for e in exc.errors], [field])
        self.assertEqual(exc.httpStatus, 422)

    def test_nodeprep(self) -> None:
        self.assertEqual(self.accounts.nodeprep("Ewa"), "ewa")
        self.assertEqual(self.accounts.nodeprep("EWA"), "ewa")
        self.assertEqual(self.accounts.nodeprep("ＥＷＡ"), "ewa")  # fullwidth, NFKC
        self.assertEqual(self.accounts.nodeprep("Łukasz"), "łukasz")

    def test_invalid(self) -> None:
        for bad in ("", "a b", "a@b", "a/b", 'a"b', "a:b", "<a>", "\u0007", 42, None):
            e = self.assertRaises(Unprocessable, self.accounts.nodeprep, bad)
            self.assertField(e, "jid")

    def test_length(self) -> None:
        self.assertEqual(self.accounts.nodeprep("a" * 1023), "a" * 1023)
        e = self.assertRaises(Unprocessable, self.accounts.nodeprep, "a" * 1024)
        self.assertIn("1023 bytes", e.errors[0]["message"])
        # bytes, not characters: 512 two-byte letters are 1024 bytes
        self.assertRaises(Unprocessable, self.accounts.nodeprep, "ł" * 512)

    def _fullNodeprep(self, localpart: str) -> str | None:
        try:
            prepared = nodeprep.prepare(localpart)
        except UnicodeError:
            return None
        if not prepared or len(prepared.encode("utf-8")) > 1023:
            return None
        return prepared

    def _ours(self, localpart: str) -> str | None:
        try:
            return self.accounts.nodeprep(localpart)
        except Unprocessable:
            return None

    def test_asciiLikeStringprep(self) -> None:
        """
        Every ASCII character, alone and between letters of either case, is prepared (or
        refused) exactly as the full nodeprep profile does: the ASCII shortcut changes nothing.
        """
        for code in range(128):
            for text in (chr(code), f"Ab{chr(code)}cD", f"{chr(code)}x", f"x{chr(code)}"):
                self.assertEqual(self._ours(text), self._fullNodeprep(text), repr(text))

    @given(st.text(alphabet=st.characters(max_codepoint=0x17F), max_size=20))
    @settings(max_examples=300, deadline=None)
    def test_likeStringprep(self, text: str) -> None:
        self.assertEqual(self._ours(text), self._fullNodeprep(text))

    def test_saslprepPassword(self) -> None:
        """The password shortcut agrees with SASLprep on every ASCII character and beyond."""
        for code in list(range(128)) + [0xA0, 0xAD, 0x2000, 0x2168, 0xFEFF]:
            text = f"pass{chr(code)}word"
            try:
                expected: str | None = saslprep(text)
            except ScramException:
                expected = None
            try:
                got: str | None = saslprepPassword(text)
            except ScramException:
                got = None
            self.assertEqual(got, expected, repr(text))

    def test_localpartOf(self) -> None:
        self.assertEqual(self.accounts.localpartOf("Szymon"), "szymon")
        self.assertEqual(self.accounts.localpartOf("Szymon@LocalHost"), "szymon")
        self.assertEqual(self.accounts.localpartOf("szymon@localhost/"), "szymon")
        self.assertEqual(self.accounts.localpartOf("szymon@localhost/phone"), "szymon")
        for bad in ("szymon@example.org", "@localhost", "a@b@localhost"):
            e = self.assertRaises(Unprocessable, self.accounts.localpartOf, bad)
            self.assertField(e, "jid")

    def test_bareJID(self) -> None:
        self.assertEqual(self.accounts.bareJID("ewa"), "ewa@localhost")


class AccountsTests(unittest.TestCase):
    """L{Accounts} on a real (in-memory SQLite) store, with a L{task.Clock} for time."""

    async def asyncSetUp(self, **config: object) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.config = makeConfig(**config)
        self.store = await startedStore(self)
        self.accounts = Accounts(self.config, self.store, self.clock)

    async def test_register(self) -> None:
        """The localpart is normalised; the password is stored only as SCRAM keys."""
        await self.asyncSetUp(scramIterations=4096)
        self.assertEqual(await self.accounts.register("Ewa", "123456"), "ewa")
        self.assertTrue(await self.accounts.userExists("EWA"))
        self.assertTrue(await self.accounts.userExists("ewa@localhost"))
        self.assertFalse(await self.accounts.userExists("adam"))
        self.assertFalse(await self.accounts.userExists("not valid"))
        credentials = await self.store.getCredentials("ewa")
        self.assertEqual(set(credentials.keys), {"SCRAM-SHA-1", "SCRAM-SHA-256"})
        for mechanism, keys in credentials.keys.items():
            self.assertEqual(keys.iterations, 4096)
            self.assertNotIn(b"123456", keys.salt + keys.storedKey + keys.serverKey)
            expected = ScramMechanism(mechanism).make_auth_info("123456", 4096, keys.salt)
            self.assertEqual((keys.salt, keys.storedKey, keys.serverKey, keys.iterations),
                             expected)

    async def test_scramExchange(self) -> None:
        """
        A complete SCRAM exchange (scramp's client and server) succeeds with the stored keys and
        the right password, for both mechanisms, and fails with a wrong one.
        """
        await self.asyncSetUp(scramIterations=4096)
        await self.accounts.register("ewa", "pass word")
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
            keys = await self.accounts.getScramKeys("ewa", mechanism)

            def authFn(username: str, keys: ScramKeys = keys) -> tuple:
                self.assertEqual(username, "ewa")
                return keys.salt, keys.storedKey, keys.serverKey, keys.iterations

            for password, ok in (("pass word", True), ("password", False)):
                server = ScramMechanism(mechanism).make_server(authFn)
                client = ScramClient([mechanism], "ewa", password)
                server.set_client_first(client.get_client_first())
                client.set_server_first(server.get_server_first())
                if ok:
                    server.set_client_final(client.get_client_final())
                    client.set_server_final(server.get_server_final())
                else:
                    self.assertRaises(
                        ScramException, server.set_client_final, client.get_client_final()
                    )

    async def test_getScramKeysUnknown(self) -> None:
        await self.asyncSetUp()
        self.assertIsNone(await self.accounts.getScramKeys("nobody", "SCRAM-SHA-1"))
        await self.accounts.register("ewa", "123456")
        self.assertIsNone(await self.accounts.getScramKeys("ewa", "SCRAM-SHA-512"))

    async def test_registerTwice(self) -> None:
        """Nodeprep-equal names are the same user."""
        await self.asyncSetUp()
        await self.accounts.register("Ewa", "123456")
        for again in ("ewa", "EWA", "ewa@localhost"):
            e = await self.assertRaisesAsync(self.accounts.register(again, "abcdefg"), Conflict)
            self.assertEqual(e.httpStatus, 409)
        self.assertTrue(await self.accounts.checkPassword("ewa", "123456"))

    async def assertRaisesAsync(self, coroutine: Any, *errors: type[Exception]) -> Any:
        """Await C{coroutine}, which must raise one of C{errors}; return the exception."""
        try:
            await coroutine
        except errors as e:
            return e
        self.fail(f"{coroutine} did not raise {errors}")

    async def test_registerInvalid(self) -> None:
        """Every invalid field is reported at once."""
        await self.asyncSetUp()
        e = await self.assertRaisesAsync(self.accounts.register("a b", "12345"), Unprocessable)
        self.assertEqual([x["field"] for x in e.errors], ["jid", "password"])
        e = await self.assertRaisesAsync(self.accounts.register("ab", "12345"), Unprocessable)
        self.assertEqual([x["field"] for x in e.errors], ["password"])
        self.assertIn("at least 6", e.errors[0]["message"])
        e = await self.assertRaisesAsync(self.accounts.register("ab", "x" * 1025), Unprocessable)
        self.assertIn("at most", e.errors[0]["message"])
        e = await self.assertRaisesAsync(self.accounts.register("ab", "abc\u0007def"), Unprocessable)
        self.assertEqual(e.errors[0]["field"], "password")
        e = await self.assertRaisesAsync(self.accounts.register("ab@example.org", "123456"),
                                     Unprocessable)
        self.assertEqual(e.errors[0]["field"], "jid")
        self.assertFalse(await self.accounts.userExists("ab"))

    async def test_passwordLengthCountsPreparedCharacters(self) -> None:
        """
        SASLprep runs before the length check: soft hyphens map to nothing, so six characters
        of which one is a soft hyphen are too short; six two-byte letters are long enough.
        """
        await self.asyncSetUp()
        await self.assertRaisesAsync(self.accounts.register("ab", "abc\u00adde"), Unprocessable)
        self.assertEqual(await self.accounts.register("ab", "łłłłłł"), "ab")

    async def test_registrationClosed(self) -> None:
        await self.asyncSetUp(registration="closed")
        e = await self.assertRaisesAsync(self.accounts.register("ewa", "123456"), Forbidden)
        self.assertEqual(e.httpStatus, 403)
        self.assertFalse(await self.accounts.userExists("ewa"))

    async def test_checkPassword(self) -> None:
        """Passwords are SASLprep'ed on both sides."""
        await self.asyncSetUp()
        await self.accounts.register("ewa", "pass\u00a0word")  # no-break space -> space
        self.assertTrue(await self.accounts.checkPassword("ewa", "pass word"))
        self.assertTrue(await self.accounts.checkPassword("ewa", "pas\u00ads word"))  # soft hyphen
        self.assertFalse(await self.accounts.checkPassword("ewa", "password"))
        self.assertFalse(await self.accounts.checkPassword("ewa", "Pass word"))
        self.assertFalse(await self.accounts.checkPassword("ewa", "pass\u0007word"))
        self.assertFalse(await self.accounts.checkPassword("ewa", None))  # type: ignore
        self.assertFalse(await self.accounts.checkPassword("nobody", "pass word"))

    async def test_checkPasswordMechanism(self) -> None:
        """
        A plain password is checked with one PBKDF2 run against the SCRAM-SHA-1 keys (the
        cheapest stored), or the SHA-256 keys of an account that has no SHA-1 keys; an unknown
        user costs the same run as a known one.
        """
        from xmppjson.storage import Credentials

        await self.asyncSetUp()
        await self.accounts.register("ewa", "123456")
        used: list[str] = []
        original = scram.verifyPassword

        def spy(mechanism: str, *args: object) -> bool:
            used.append(mechanism)
            return original(mechanism, *args)  # type: ignore[arg-type]

        self.patch(scram, "verifyPassword", spy)
        self.assertTrue(await self.accounts.checkPassword("ewa", "123456"))
        self.assertFalse(await self.accounts.checkPassword("nobody", "123456"))
        self.assertEqual(used, ["SCRAM-SHA-1", "SCRAM-SHA-1"])
        only256 = scram.deriveKeys("SCRAM-SHA-256", "abcdefg", self.config.scramIterations)
        await self.store.setCredentials("ewa", Credentials(keys={"SCRAM-SHA-256": only256}))
        self.assertTrue(await self.accounts.checkPassword("ewa", "abcdefg"))
        self.assertFalse(await self.accounts.checkPassword("ewa", "123456"))
        self.assertEqual(used[2:], ["SCRAM-SHA-256", "SCRAM-SHA-256"])

    async def test_checkPasswordInThreadPool(self) -> None:
        """With a reactor that has threads, PBKDF2 runs in its thread pool, not inline."""
        await self.asyncSetUp()
        await self.accounts.register("ewa", "123456")
        threaded = Accounts(self.config, self.store, realReactor())
        seen: list[threading.Thread] = []
        original = scram.verifyPassword

        def spy(*args: object) -> bool:
            seen.append(threading.current_thread())
            return original(*args)  # type: ignore[arg-type]

        self.patch(scram, "verifyPassword", spy)
        self.assertTrue(await threaded.checkPassword("ewa", "123456"))
        self.assertEqual(len(seen), 1)
        self.assertIsNot(seen[0], threading.main_thread())

    async def test_login(self) -> None:
        """A token is 48 URL-safe characters, stored only as its SHA-256."""
        await self.asyncSetUp()
        await self.accounts.register("Ewa", "123456")
        token, localpart = await self.accounts.login("EWA", "123456")
        self.assertEqual(localpart, "ewa")
        self.assertEqual(len(token), 48)
        self.assertRegex(token, r"^[A-Za-z0-9_-]{48}$")
        self.assertEqual(await self.accounts.authenticateToken(token), "ewa")
        now = self.accounts.now()
        self.assertEqual(await self.store.lookupToken(hashToken(token), now), "ewa")
        self.assertEqual(hashToken(token), hashlib.sha256(token.encode()).hexdigest())
        self.assertIsNone(await self.store.lookupToken(token, now))

    async def test_loginWithJID(self) -> None:
        await self.asyncSetUp()
        await self.accounts.register("ewa", "123456")
        for name in ("ewa@localhost", "Ewa@LOCALHOST", "ewa@localhost/"):
            _, localpart = await self.accounts.login(name, "123456")
            self.assertEqual(localpart, "ewa")

    async def test_loginRefused(self) -> None:
        """Wrong password, unknown user, other domain, invalid name: all the same 401."""
        await self.asyncSetUp()
        await self.accounts.register("ewa", "123456")
        for name, password in (("ewa", "1234567"), ("adam", "123456"),
                               ("ewa@example.org", "123456"), ("e w a", "123456"),
                               ("ewa", "")):
            e = await self.assertRaisesAsync(self.accounts.login(name, password), NotAuthorized)
            self.assertEqual(e.httpStatus, 401)
            self.assertEqual(e.text, "wrong jid or password")

    async def test_tokenExpiry(self) -> None:
        await self.asyncSetUp(tokenTTL=600)
        await self.accounts.register("ewa", "123456")
        token, _ = await self.accounts.login("ewa", "123456")
        self.clock.advance(599)
        self.assertEqual(await self.accounts.authenticateToken(token), "ewa")
        self.clock.advance(2)
        self.assertIsNone(await self.accounts.authenticateToken(token))

    async def test_severalTokens(self) -> None:
        """Each login adds a token; revoking one leaves the others."""
        await self.asyncSetUp()
        await self.accounts.register("ewa", "123456")
        first, _ = await self.accounts.login("ewa", "123456")
        second, _ = await self.accounts.login("ewa", "123456")
        self.assertNotEqual(first, second)
        self.assertEqual(await self.accounts.authenticateToken(first), "ewa")
        self.assertEqual(await self.accounts.authenticateToken(second), "ewa")
        self.assertTrue(await self.accounts.revokeToken(first))
        self.assertFalse(await self.accounts.revokeToken(first))
        self.assertIsNone(await self.accounts.authenticateToken(first))
        self.assertEqual(await self.accounts.authenticateToken(second), "ewa")

    async def test_badTokens(self) -> None:
        await self.asyncSetUp()
        for bad in ("", "x", "x" * (MAX_TOKEN_LENGTH + 1), None, 42):
            self.assertIsNone(await self.accounts.authenticateToken(bad))  # type: ignore
            self.assertFalse(await self.accounts.revokeToken(bad))  # type: ignore

    async def test_expiredTokensPurged(self) -> None:
        """A login sweeps tokens that expired, at most once per PURGE_INTERVAL."""
        await self.asyncSetUp(tokenTTL=60)
        await self.accounts.register("ewa", "123456")
        old, _ = await self.accounts.login("ewa", "123456")
        issued = self.accounts.now()
        self.clock.advance(120)
        await self.accounts.login("ewa", "123456")
        # not yet: the last sweep was less than PURGE_INTERVAL ago
        self.assertEqual(await self.store.lookupToken(hashToken(old), issued), "ewa")
        self.clock.advance(PURGE_INTERVAL)
        await self.accounts.login("ewa", "123456")
        self.assertIsNone(await self.store.lookupToken(hashToken(old), issued))

    async def test_changePassword(self) -> None:
        """The new password works, the old one does not, live tokens stay valid."""
        await self.asyncSetUp()
        await self.accounts.register("ewa", "123456")
        token, _ = await self.accounts.login("ewa", "123456")
        await self.accounts.changePassword("ewa", "abcdefgh")
        self.assertTrue(await self.accounts.checkPassword("ewa", "abcdefgh"))
        self.assertFalse(await self.accounts.checkPassword("ewa", "123456"))
        self.assertEqual(await self.accounts.authenticateToken(token), "ewa")
        await self.assertRaisesAsync(self.accounts.changePassword("ewa", "abc"), Unprocessable)
        self.assertTrue(await self.accounts.checkPassword("ewa", "abcdefgh"))
        await self.assertRaisesAsync(self.accounts.changePassword("nobody", "abcdefgh"),
                                 UnknownUser)

    async def test_storeUnavailable(self) -> None:
        """A store that cannot serve makes every call fail with StoreUnavailable (503)."""
        self.clock = task.Clock()
        store = makeStore()  # never started
        accounts = Accounts(makeConfig(), store, self.clock)
        for call in (accounts.register("ewa", "123456"), accounts.login("ewa", "123456"),
                     accounts.authenticateToken("x" * 48), accounts.userExists("ewa")):
            e = await self.assertRaisesAsync(call, StoreUnavailable)
            self.assertEqual(e.httpStatus, 503)
