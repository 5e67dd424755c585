"""One small HTTP/1.1 server (httptools on asyncio) under both listen.http (ext_authz, forward-auth) and
listen.admin (health, metrics, JWKS): handler.py says what a listener answers with, protocol.py serves one
connection within its bounds, listener.py accepts, limits and stops connections."""
