"""The customer panel room: the HTTP API of SPEC §8, the form as a mail producer, the reference page.

It owns the routes (routes.py, form.py), the panel's JWTs and signed download links (auth.py),
who may see what (access.py), reading uploads (upload.py), turning a form into RFC 5322 bytes
(compose.py), HTML sanitising (sanitise.py) and the `/panel` page (page.py). It may import
gateway.intake, gateway.settings and store; it never imports the wiring (gateway.app,
gateway.http): everything it works with arrives as one `PanelDeps` when it is mounted (deps.py).
"""
