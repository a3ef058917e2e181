from twisted.application.service import ServiceMaker

xmppjson = ServiceMaker("xmppjson", "xmppjson.tap", "XMPP and JSON-over-WebSocket chat server", "xmppjson")
