"""
xmppjson: one Twisted process speaking native XMPP (c2s) and a JSON WebSocket dialect, sharing
one in-memory session router.
"""

__version__ = "0.1.0"
