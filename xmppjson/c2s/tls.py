"""
The certificate behind STARTTLS on the XMPP door.

An operator normally names a certificate chain and its key (C{--tls-cert}, C{--tls-key}, PEM).
Without them the server still offers TLS: on first start it generates a self-signed certificate
for its domain (RSA 2048, SAN = the domain, ten years) and keeps it beside the database, as
C{xmppjson-tls/<domain>.pem} (key and certificate in one file, mode 0600), so that clients which
pinned it on first use (Gajim, Conversations, Pidgin all offer that) see the same certificate on
every later start.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.logger import Logger

from xmppjson.config import Config

log = Logger()

#: How long a generated certificate is valid.
SELF_SIGNED_VALIDITY = datetime.timedelta(days=3650)

#: A generated certificate this close to expiry is replaced at start-up.
RENEW_BEFORE = datetime.timedelta(days=30)

#: The directory, beside the database, that holds generated certificates.
TLS_DIRECTORY = "xmppjson-tls"


class TLSConfigurationError(Exception):
    """The configured certificate or key cannot be used; the message says why."""


@dataclass
class ServerTLS:
    """
    What the door needs to offer STARTTLS.

    @ivar contextFactory: handed to C{transport.startTLS}; one for every connection, so the
        OpenSSL context (and its session cache) is built once.
    @ivar certificatePath: the PEM file the certificate came from (for logs and docs).
    @ivar selfSigned: whether the server generated the certificate itself.
    @ivar fingerprint: SHA-256 of the leaf certificate, C{AB:CD:...}, for users who compare it
        with what their client shows.
    """

    contextFactory: ssl.CertificateOptions
    certificatePath: str
    selfSigned: bool
    fingerprint: str


def storageDirectory(config: Config) -> str:
    """
    Where a generated certificate lives: the directory of the database file for C{sqlite:PATH},
    the working directory for anything else (an in-memory or PostgreSQL database).
    """
    db = config.db
    if db.startswith("sqlite:") and db != "sqlite::memory:":
        path = db[len("sqlite:") :]
        directory = os.path.dirname(os.path.abspath(path))
    else:
        directory = os.getcwd()
    return os.path.join(directory, TLS_DIRECTORY)


def selfSignedPath(config: Config) -> str:
    """The file holding the generated key and certificate for C{config.domain}."""
    return os.path.join(storageDirectory(config), f"{config.domain}.pem")


def generateSelfSigned(domain: str, now: datetime.datetime | None = None) -> bytes:
    """
    A new RSA 2048 key and a self-signed certificate for C{domain}, as one PEM document (key
    first).  RSA rather than EC because every XMPP client in use, old Pidgin builds included,
    accepts it.
    """
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little slack for clients whose clock is behind the server's.
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return keyPEM + certificate.public_bytes(serialization.Encoding.PEM)


def _writePrivate(path: str, data: bytes) -> None:
    """
    Write C{data} to C{path} readable by the owner only, atomically: a crash or a second
    server starting at the same moment never leaves half a key behind.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        # mkstemp already creates the file 0600; chmod states it for umask-free certainty.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _needsRenewal(pem: bytes, domain: str, now: datetime.datetime) -> bool:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
        serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        return True
    leaf = certificates[0]
    if leaf.not_valid_after_utc - now < RENEW_BEFORE:
        return True
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    return domain not in san.get_values_for_type(x509.DNSName)


def ensureSelfSigned(config: Config) -> str:
    """
    The path of the generated certificate for C{config.domain}, generating it when it is
    missing, unreadable, for another name or about to expire.

    @raise OSError: the directory cannot be written.
    """
    path = selfSignedPath(config)
    now = datetime.datetime.now(datetime.UTC)
    try:
        with open(path, "rb") as f:
            existing = f.read()
    except FileNotFoundError:
        existing = None
    if existing is not None and not _needsRenewal(existing, config.domain, now):
        return path
    log.info(
        "Generating a self-signed certificate for {domain} in {path}",
        domain=config.domain,
        path=path,
    )
    _writePrivate(path, generateSelfSigned(config.domain, now))
    return path


def contextFromPEM(certificatePEM: bytes, keyPEM: bytes) -> tuple[ssl.CertificateOptions, str]:
    """
    Build the server's TLS options from a PEM certificate chain (leaf first) and its key.

    @return: the options and the leaf's SHA-256 fingerprint.
    @raise TLSConfigurationError: no certificate, no key, or a key that does not match.
    """
    try:
        chain = x509.load_pem_x509_certificates(certificatePEM)
    except ValueError as e:
        raise TLSConfigurationError(f"no usable PEM certificate: {e}") from None
    try:
        key = serialization.load_pem_private_key(keyPEM, password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigurationError(f"no usable unencrypted PEM private key: {e}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != chain[
        0
    ].public_key().public_bytes(serialization.Encoding.DER, spki):
        raise TLSConfigurationError("the private key does not belong to the certificate")
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        # TLS 1.0/1.1 are deprecated (RFC 8996); every maintained client speaks 1.2.
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    # Build the OpenSSL context now: a broken setup shows at start-up, not at the first login.
    options.getContext()
    fingerprint = chain[0].fingerprint(hashes.SHA256()).hex(":").upper()
    return options, fingerprint


def loadServerTLS(config: Config) -> ServerTLS | None:
    """
    The TLS setup for C{config}: the operator's certificate when configured, else the generated
    one.

    @return: C{None} when no certificate could be generated (a read-only directory); the
        door then runs without STARTTLS, and says so in the log.
    @raise TLSConfigurationError: the configured certificate or key is unusable (a
        configuration mistake that must stop the start, not silently downgrade to plaintext).
    """
    if config.tlsCert or config.tlsKey:
        if not (config.tlsCert and config.tlsKey):
            raise TLSConfigurationError("--tls-cert and --tls-key go together")
        try:
            with open(config.tlsCert, "rb") as f:
                certificatePEM = f.read()
            with open(config.tlsKey, "rb") as f:
                keyPEM = f.read()
        except OSError as e:
            raise TLSConfigurationError(f"cannot read the TLS certificate or key: {e}") from None
        options, fingerprint = contextFromPEM(certificatePEM, keyPEM)
        return ServerTLS(options, config.tlsCert, False, fingerprint)
    try:
        path = ensureSelfSigned(config)
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        log.error(
            "No TLS certificate configured and none could be generated ({error}): "
            "STARTTLS is not offered",
            error=e,
        )
        return None
    options, fingerprint = contextFromPEM(pem, pem)
    log.info(
        "STARTTLS with the self-signed certificate {path} (SHA-256 {fingerprint})",
        path=path,
        fingerprint=fingerprint,
    )
    return ServerTLS(options, path, True, fingerprint)
