"""The web dashboard every peer serves at ``/`` (see docs/dashboard.md).

``server.install`` adds its routes to a peer's application, and ``server.gate``
goes in front of the auth middleware so that a browser on another computer can
reach the login form. The page is plain static files in ``static/``: no build
step, no third-party code. ``links`` is light on purpose (the CLI imports it).
"""
