"""
Packaging for xmppjson.

The twistd plugin lives in C{twisted/plugins/xmppjson.py}; C{twisted.plugins} is listed as a
package so that a normal (non-editable) install drops the plugin file into Twisted's plugin
namespace.  There is deliberately no C{__init__.py} in C{twisted/} or C{twisted/plugins/}.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent

setup(
    name="xmppjson",
    version="0.1.0",
    description="A Twisted chat server speaking native XMPP and a JSON WebSocket dialect",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "xmppjson",
        "xmppjson.c2s",
        "xmppjson.im",
        "xmppjson.storage",
        "twisted.plugins",
    ],
    package_data={
        "twisted.plugins": ["xmppjson.py"],
        "xmppjson": ["static/*", "static/**/*"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7,<28",
        "autobahn>=24.4,<27",
        "tx-xmpp>=0.15,<1",
        "txpostgres>=1.7,<2",
        "psycopg2-binary>=2.9,<3",
        "treq>=23.11,<27",
        "scramp>=1.4,<2",
        # PBKDF2 for password checks (xmppjson/scram.py): its bundled OpenSSL is twice as fast
        # as Debian 12's, which hashlib uses.  Also what twisted[tls] brings.
        "cryptography>=42",
        "zope.interface>=6",
    ],
    extras_require={
        # wheel: tests/test_packaging.py builds the package without build isolation, and
        # setuptools older than 70.1 needs it for bdist_wheel.
        # openapi-spec-validator: tests/test_rest.py checks the OpenAPI document and that real
        # answers fit it.
        "test": ["hypothesis>=6.100", "slixmpp>=1.8", "mypy", "ruff", "wheel",
                 "openapi-spec-validator>=0.7"],
    },
    zip_safe=False,
)
