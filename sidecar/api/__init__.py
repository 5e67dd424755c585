"""The SessionService API: the gRPC servicer (``servicer``) and its bearer-token guard (``auth``).

The Python client for login services is ``sidecar.client``.
"""
