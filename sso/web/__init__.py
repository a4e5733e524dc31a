"""Cross-cutting web concerns, one module each: CSRF and Origin checks (``csrf``),
errors as pages or JSON (``errors``), security headers (``headers``), safe redirects
(``redirects``), bearer tokens (``bearer``), the request speed-ups (``fastpath``), and
``wiring``, which installs them on the app.
"""
