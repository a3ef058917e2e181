"""
SCRAM key derivation (RFC 5802, RFC 7677): what a password becomes before it is stored.

xmppjson never stores a password.  For each supported SCRAM mechanism it stores a random salt,
the iteration count, C{StoredKey = H(HMAC(SaltedPassword, "Client Key"))} and
C{ServerKey = HMAC(SaltedPassword, "Server Key")}, where
C{SaltedPassword = PBKDF2-HMAC-H(password, salt, iterations)}.  Those are exactly the values a
SCRAM server needs, and they are enough to check a plain password too (L{verifyPassword}).

Passwords given to this module are already SASLprep'ed (L{xmppjson.accounts.Accounts} does that).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

from xmppjson.storage import Credentials, ScramKeys

#: SCRAM mechanism name -> hashlib name of its hash function.
MECHANISMS: dict[str, str] = {
    "SCRAM-SHA-1": "sha1",
    "SCRAM-SHA-256": "sha256",
}

#: Length of a freshly generated salt, in bytes.
SALT_LENGTH = 16


def _hashName(mechanism: str) -> str:
    try:
        return MECHANISMS[mechanism]
    except KeyError:
        raise ValueError(f"unsupported SCRAM mechanism {mechanism!r}") from None


def _hashlibPBKDF2(hashName: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(hashName, password, salt, iterations)


def _cryptographyPBKDF2() -> Callable[[str, bytes, bytes, int], bytes] | None:
    """
    PBKDF2 from C{cryptography} (already installed: Twisted's TLS needs it), or C{None} when it
    is missing or refuses a hash (a FIPS build and SHA-1).  Its wheels carry their own OpenSSL,
    whose PBKDF2 costs half of what the OpenSSL 3.0 that C{hashlib} links on Debian 12 costs
    for the same iterations (0.67 against 1.43 ms for SHA-1 at 4096 here; the 3.0 series
    copies and frees its HMAC context on every iteration).  The output is the same function
    of the same inputs, checked here against C{hashlib} before it is used.
    """
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
    except ImportError:
        return None
    algorithms = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}

    def pbkdf2(hashName: str, password: bytes, salt: bytes, iterations: int) -> bytes:
        algorithm = algorithms[hashName]()
        return PBKDF2HMAC(algorithm, algorithm.digest_size, salt, iterations).derive(password)

    try:
        for hashName in algorithms:
            if pbkdf2(hashName, b"pencil", b"salt", 2) != _hashlibPBKDF2(
                hashName, b"pencil", b"salt", 2
            ):
                return None
    except Exception:  # noqa: BLE001 - any refusal means: use hashlib
        return None
    return pbkdf2


#: The PBKDF2 implementation in use: C{cryptography}'s if it works, else C{hashlib}'s.
_pbkdf2: Callable[[str, bytes, bytes, int], bytes] = _cryptographyPBKDF2() or _hashlibPBKDF2


def saltedPassword(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    """
    C{Hi(Normalize(password), salt, i)} of RFC 5802, i.e. PBKDF2 with HMAC of the mechanism's
    hash.

    @param password: the SASLprep'ed password.
    """
    return _pbkdf2(_hashName(mechanism), password.encode("utf-8"), salt, iterations)


def clientKey(mechanism: str, salted: bytes) -> bytes:
    """C{ClientKey = HMAC(SaltedPassword, "Client Key")}."""
    return hmac.digest(salted, b"Client Key", _hashName(mechanism))


def storedKey(mechanism: str, clientKeyValue: bytes) -> bytes:
    """C{StoredKey = H(ClientKey)}."""
    return hashlib.new(_hashName(mechanism), clientKeyValue).digest()


def serverKey(mechanism: str, salted: bytes) -> bytes:
    """C{ServerKey = HMAC(SaltedPassword, "Server Key")}."""
    return hmac.digest(salted, b"Server Key", _hashName(mechanism))


def deriveKeys(
    mechanism: str, password: str, iterations: int, salt: bytes | None = None
) -> ScramKeys:
    """
    Derive the stored form of C{password} for one mechanism.

    @param password: the SASLprep'ed password.
    @param salt: the salt to use; a fresh random one of L{SALT_LENGTH} bytes by default.
    """
    if iterations <= 0:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = secrets.token_bytes(SALT_LENGTH)
    salted = saltedPassword(mechanism, password, salt, iterations)
    return ScramKeys(
        salt=salt,
        iterations=iterations,
        storedKey=storedKey(mechanism, clientKey(mechanism, salted)),
        serverKey=serverKey(mechanism, salted),
    )


def makeCredentials(password: str, iterations: int) -> Credentials:
    """
    The stored form of C{password} for every mechanism of L{MECHANISMS}, each with its own salt.
    """
    return Credentials(keys={m: deriveKeys(m, password, iterations) for m in MECHANISMS})


def verifyPassword(mechanism: str, keys: ScramKeys, password: str) -> bool:
    """
    Whether C{password} is the one C{keys} were derived from: one PBKDF2 run, then a
    constant-time comparison of the StoredKey.
    """
    salted = saltedPassword(mechanism, password, keys.salt, keys.iterations)
    candidate = storedKey(mechanism, clientKey(mechanism, salted))
    return hmac.compare_digest(candidate, keys.storedKey)
