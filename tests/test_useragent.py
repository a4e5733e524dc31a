"""Issue #14 item 7 (and the admin lists of item 6): a device in plain words from a
User-Agent, through ua-parser's rules."""

from __future__ import annotations

import pytest

from sso.useragent import UNKNOWN, describe

CHROME_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
              "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36")
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI_IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")
EDGE_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                "Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0")
CHROME_ANDROID = ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/126.0.0.0 Mobile Safari/537.36")
FIREFOX_UBUNTU = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"


@pytest.mark.parametrize(("user_agent", "words"), [
    (CHROME_MAC, "Chrome 126 on macOS"),
    (FIREFOX_WINDOWS, "Firefox 128 on Windows"),
    (SAFARI_IPHONE, "Safari 17 on iOS 17"),
    (EDGE_WINDOWS, "Edge 126 on Windows"),
    (CHROME_ANDROID, "Chrome 126 on Android"),
    (FIREFOX_UBUNTU, "Firefox 127 on Ubuntu"),
])
def test_item_7_browsers_and_systems_in_plain_words(user_agent, words):
    assert describe(user_agent) == words


def test_item_7_tools_are_named_without_an_os():
    assert describe("curl/8.5.0") == "curl 8"
    assert describe("python-requests/2.32.3") == "Python requests 2"


def test_item_7_only_the_system_known():
    assert describe("Mozilla/5.0 (Windows NT 10.0; Win64; x64)") == "A browser on Windows"


@pytest.mark.parametrize("user_agent", ["", "   ", "garbage", "\x00"])
def test_item_7_nothing_recognisable_is_an_unknown_device(user_agent):
    assert describe(user_agent) == UNKNOWN


def test_item_7_a_user_agent_cut_where_sessions_cut_it_still_reads():
    # The session record keeps the first 120 characters (sso/sessions.py).
    assert describe(EDGE_WINDOWS[:120]) == "Edge 126 on Windows"


def test_item_7_a_huge_header_is_read_only_up_to_its_bound():
    assert describe(FIREFOX_WINDOWS + " " + "x" * 100_000) == "Firefox 128 on Windows"
