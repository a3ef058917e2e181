"""
The native XMPP door: RFC 6120 client-to-server streams on TCP.

 - L{xmppjson.c2s.stream}: the protocol (stream negotiation, then stanzas straight to the IM
   core), L{xmppjson.c2s.stream.C2SSession} and L{xmppjson.c2s.stream.makeC2SFactory}.
 - L{xmppjson.c2s.sasl}: the SASL mechanisms (SCRAM-SHA-256, SCRAM-SHA-1, PLAIN).
 - L{xmppjson.c2s.tls}: the STARTTLS certificate (configured, or generated once).

What is supported, and how to connect Pidgin or Gajim, is in C{docs/xmpp.md}.
"""
