"""
Accounts: registration, password checks (SASL PLAIN, SCRAM, REST login), login tokens.

TO BE IMPLEMENTED (foundation issue).  The public API below is what the doors rely on.
"""

from __future__ import annotations

from typing import Any

from xmppjson.config import Config


class Accounts:
    """
    The one place that knows how passwords and tokens are checked.

     - C{nodeprep(localpart) -> str}: normalise a localpart (RFC 7622 / stringprep nodeprep),
       raising L{xmppjson.error.Unprocessable} for an invalid one.
     - C{async register(localpart, password) -> str}: create the account, return the
       normalised localpart; raises UserExists, Unprocessable, Forbidden (registration closed).
     - C{async checkPassword(localpart, password) -> bool}: for SASL PLAIN and REST login.
     - C{async getScramKeys(localpart, mechanism) -> ScramKeys | None}: for SASL SCRAM.
     - C{async login(jidOrLocalpart, password) -> (token, localpart)}: raises NotAuthorized.
     - C{async authenticateToken(token) -> localpart | None}
     - C{async revokeToken(token) -> bool}
     - C{async changePassword(localpart, password) -> None}
    """

    def __init__(self, config: Config, store: Any, reactor: Any):
        self.config = config
        self.store = store
        self.reactor = reactor
