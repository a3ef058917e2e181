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


def saltedPassword(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    """
    C{Hi(Normalize(password), salt, i)} of RFC 5802, i.e. PBKDF2 with HMAC of the mechanism's
    hash.

    @param password: the SASLprep'ed password.
    """
    return hashlib.pbkdf2_hmac(_hashName(mechanism), password.encode("utf-8"), salt, iterations)


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
