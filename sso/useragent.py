"""A device in plain words ("Firefox 128 on Windows") from a User-Agent header.

Session lists (the portal's "Your sessions", the admin console's) show this instead of
the raw string. The parsing is ua-parser's (the uap-core rules, maintained upstream as
browsers change); only the wording is Keycard's. ua-parser is imported on first use:
compiling its rules takes about half a second, which only the pages that list sessions
should pay, once per process. Lists repeat the same few strings, so answers are cached.
"""

from __future__ import annotations

from functools import lru_cache

UNKNOWN = "Unknown device"
# Sessions keep 200 characters; a caller passing a raw header is bounded too (regex time).
MAX_LENGTH = 512

# uap-core's family names, as people call them today.
_OS_NAMES = {"Mac OS X": "macOS", "Chrome OS": "ChromeOS"}
_BROWSER_NAMES = {"HeadlessChrome": "Headless Chrome", "Python Requests": "Python requests",
                  "Mobile Safari": "Safari", "Chrome Mobile": "Chrome",
                  "Firefox Mobile": "Firefox", "Chrome Mobile iOS": "Chrome",
                  "Mobile Safari UI/WKWebView": "An app's web view"}
# Systems whose major version people name, and whose User-Agent tells it ("iOS 17").
_VERSIONED_OS = {"iOS"}  # not Windows nor Android: reduced User-Agents say 10 for any


@lru_cache(maxsize=2048)
def describe(user_agent: str) -> str:
    """``Browser major on OS``; either half alone when only it is known, else UNKNOWN."""
    text = user_agent.strip()[:MAX_LENGTH]
    if not text:
        return UNKNOWN
    from ua_parser import parse_os, parse_user_agent

    browser, system = parse_user_agent(text), parse_os(text)
    name = ""
    if browser is not None and browser.family != "Other":
        name = _BROWSER_NAMES.get(browser.family, browser.family)
        if browser.major:
            name = f"{name} {browser.major}"
    where = ""
    if system is not None and system.family != "Other":
        where = _OS_NAMES.get(system.family, system.family)
        if system.major and system.family in _VERSIONED_OS:
            where = f"{where} {system.major}"
    if name and where:
        return f"{name} on {where}"
    return name or (f"A browser on {where}" if where else UNKNOWN)
