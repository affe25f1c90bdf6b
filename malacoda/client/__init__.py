"""The client side: the DEALER channel one I/O thread owns (:mod:`.channel`), the
:class:`~malacoda.client.proxy.Proxy` bound to a daemon's name, and the helpers ``malacodactl`` calls through
it (:mod:`.control`).
"""
