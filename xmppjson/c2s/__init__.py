"""
The native XMPP door: RFC 6120 client-to-server streams on TCP.

 - L{xmppjson.c2s.stream}: the protocol (stream negotiation, then stanzas straight to the IM
   core), L{xmppjson.c2s.stream.C2SSession} and L{xmppjson.c2s.stream.makeC2SFactory}.
 - L{xmppjson.c2s.sasl}: the SASL mechanisms (SCRAM-SHA-256, SCRAM-SHA-1, PLAIN).
 - L{xmppjson.c2s.tls}: the STARTTLS certificate (configured, or generated once).
 - L{xmppjson.c2s.sm}: XEP-0198 stream management (acks, resumption).
 - L{xmppjson.c2s.csi}: XEP-0352 client state indication (what an inactive client is spared).
 - L{xmppjson.c2s.register}: XEP-0077 in-band registration and password change.

What is supported, and how to connect Pidgin or Gajim, is in C{docs/xmpp.md}.
"""
