"""A person-readable device name ("Firefox 127 on Linux") from a User-Agent header.

Browsers and operating systems come from ua-parser (the maintained Browserscope rules),
imported on first use: compiling its rules takes about half a second, which only the
pages that list sessions should pay, once per process.
"""

from __future__ import annotations

from functools import lru_cache

# ua-parser's family names, shortened to what people call them.
_OS_NAMES = {"Mac OS X": "macOS", "Other": ""}
_BROWSER_NAMES = {"Other": "", "Mobile Safari": "Safari", "Chrome Mobile": "Chrome",
                  "Firefox Mobile": "Firefox", "Chrome Mobile iOS": "Chrome",
                  "Mobile Safari UI/WKWebView": "An app's web view"}


@lru_cache(maxsize=1024)
def describe(user_agent: str) -> str:
    """``"Chrome 126 on macOS"``, ``"curl 8"``, or ``"Unknown device"``."""
    if not user_agent.strip():
        return "Unknown device"
    from ua_parser import parse_os, parse_user_agent

    agent, system = parse_user_agent(user_agent), parse_os(user_agent)
    browser = _BROWSER_NAMES.get(agent.family, agent.family) if agent else ""
    if browser and agent and agent.major:
        browser = f"{browser} {agent.major}"
    os_name = _OS_NAMES.get(system.family, system.family) if system else ""
    if os_name and system and system.major and system.family in {"iOS", "Android", "Windows"}:
        os_name = f"{os_name} {system.major}"
    if browser and os_name:
        return f"{browser} on {os_name}"
    return browser or os_name or "Unknown device"
