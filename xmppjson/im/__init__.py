"""
The IM core: server logic per feature (routing, presence, roster, offline storage, server iq),
door-agnostic.  Doors reach it only through L{xmppjson.im.server.IMServer}.
"""
