"""Every console and portal page, at desktop and phone width: no sideways scrolling, and no
serious or critical accessibility violation found by axe-core (issue #14, items 1 and 10).

The pages are not listed here: a signed-in admin crawls them from the portal and the admin
console (links, and GET forms such as searches and confirmation steps), so pages added
later are covered without touching this file. axe-core comes from npm, pinned by
tests/browser/package-lock.json; ``make test`` installs it (``npm ci --prefix tests/browser``).

With ``KEYCARD_SCREENSHOTS=DIR`` set, ``test_readme_screenshots`` saves the README's
pictures there (``portal.png``, ``admin-rules.png``, ``admin-apps.png`` when that page
exists).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from playwright.sync_api import Browser, Page, expect
from werkzeug.exceptions import HTTPException

from tests.support import sign_in

AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
# name: (width, height, colour scheme)
SCREENS = {"desktop": (1280, 800, "light"), "phone": (390, 844, "light"),
           "phone-dark": (390, 844, "dark")}
CRAWLED = {"portal", "admin"}  # the blueprints whose GET pages are checked
MAX_PAGES = 60

# Serious and critical violations only; each as "rule: help (first elements)".
AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations
    .filter(v => v.impact === "serious" || v.impact === "critical")
    .map(v => `${v.id} (${v.impact}): ${v.help}: ` +
              v.nodes.slice(0, 4).map(n => n.target.join(" ")).join(", "));
}"""

OVERFLOW = """() => {
  const doc = document.scrollingElement;
  const wide = [...document.querySelectorAll("body *")]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
    .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.className ? "." + e.className : ""));
  return {scroll: doc.scrollWidth, inner: window.innerWidth, wide};
}"""


def seed(keycard) -> None:
    """Enough data that every list has rows: rules, people with sessions, an app, audit."""
    services = keycard.services
    services.admin.add_rule("acme/platform", "deployer", actor="alice")
    services.admin.add_rule("acme", "staff, viewer", actor="alice")
    for name, host in (("Grafana", "grafana"), ("Argo CD", "argocd"), ("Wiki", "wiki")):
        services.clients.create(name=name, redirect_uris=[f"https://{host}.acme.test/oauth/cb"],
                                home_url=f"https://{host}.acme.test/")
    for login in ("bob", "dave"):
        with requests.Session() as http:
            http.headers["User-Agent"] = (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
                "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")
            sign_in(http, keycard.url, login)
            http.cookies.clear()  # the session stays live in Redis; this client just forgets it
    services.admin.add_rule("@dave", "auditor", actor="alice")
    services.audit.record("signin.refused", subject="mallory", reason="not_a_member",
                          login="mallory", user_id="1666")


def sign_in_admin(page: Page, keycard_url: str) -> None:
    page.goto(keycard_url + "/")
    page.get_by_role("link", name="Sign in with GitHub").click()
    page.get_by_role("button", name="Continue as alice").click()
    expect(page.get_by_test_id("login")).to_have_text("alice")


def crawled_blueprint(keycard, path: str) -> bool:
    try:
        endpoint, _ = keycard.app.url_map.bind("localhost").match(path, method="GET")
    except HTTPException:
        return False
    return str(endpoint).split(".")[0] in CRAWLED


def page_key(url: str) -> tuple[str, tuple[str, ...]]:
    """One visit per path and set of query names (page 2 stands for page 3, 4...)."""
    parts = urlsplit(url)
    names = tuple(sorted({p.split("=")[0] for p in parts.query.split("&") if p}))
    return parts.path, names


def links_and_get_forms(page: Page) -> list[str]:
    return list(page.evaluate("""() => {
      const out = [...document.querySelectorAll("a[href]")].map(a => a.href);
      for (const form of document.querySelectorAll("form")) {
        if ((form.getAttribute("method") || "get").toLowerCase() !== "get") continue;
        const query = new URLSearchParams(new FormData(form)).toString();
        out.push(form.action + (query ? "?" + query : ""));
      }
      return out;
    }"""))


def crawl(page: Page, keycard) -> Iterator[str]:
    """Visit every portal and console page reachable from / and /admin; yields each URL
    once the page is loaded."""
    long_error = "/admin/audit?" + urlencode({"since": "not-a-date-" + "x" * 240})
    queue = [keycard.url + "/", keycard.url + "/admin", keycard.url + long_error]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while queue and len(seen) < MAX_PAGES:
        url = queue.pop(0)
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != keycard.url or page_key(url) in seen:
            continue
        if not crawled_blueprint(keycard, parts.path):
            continue
        seen.add(page_key(url))
        page.goto(url.split("#")[0])
        yield url
        queue += links_and_get_forms(page)
    assert len(seen) < MAX_PAGES, "crawl cut short: raise MAX_PAGES"


@pytest.fixture
def admin_page(browser: Browser, keycard) -> Iterator[Page]:
    seed(keycard)
    # Keycard's CSP allows no script at all: axe is injected past it (the test's own code).
    context = browser.new_context(bypass_csp=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    sign_in_admin(page, keycard.url)
    yield page
    context.close()


@pytest.mark.parametrize("screen", list(SCREENS))
def test_item_1_every_page_fits_the_screen_and_passes_axe(admin_page: Page, keycard, screen):
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `npm ci --prefix tests/browser` (make test does)")
    width, height, scheme = SCREENS[screen]
    admin_page.set_viewport_size({"width": width, "height": height})
    admin_page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
    problems: dict[str, list[str]] = {}
    visited = []
    for url in crawl(admin_page, keycard):
        path = url.removeprefix(keycard.url)[:100]
        visited.append(path)
        fit = admin_page.evaluate(OVERFLOW)
        if fit["scroll"] > fit["inner"]:
            problems.setdefault(path, []).append(
                f"scrolls sideways: {fit['scroll']} px > {fit['inner']} px ({fit['wide']})")
        admin_page.add_script_tag(path=str(AXE))
        problems.setdefault(path, []).extend(admin_page.evaluate(AXE_RUN))
    paths = {urlsplit(p).path for p in visited}
    # The crawl really reached the console's pages, a person and the confirmation steps.
    assert {"/", "/admin/rules", "/admin/people", "/admin/people/bob", "/admin/sessions",
            "/admin/audit", "/admin/webhooks", "/admin/rules/remove",
            "/admin/people/bob/sessions/end"} <= paths, sorted(paths)
    found = [f"{path}: {problem}" for path, issues in problems.items() for problem in issues]
    assert not found, "\n".join(found)


def test_readme_screenshots(admin_page: Page, keycard, tmp_path):
    """Takes the README's screenshots: into KEYCARD_SCREENSHOTS when it names a directory
    (docs/screenshots to refresh them), else into a temporary one."""
    out = Path(os.environ.get("KEYCARD_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    admin_page.set_viewport_size({"width": 1280, "height": 800})
    shots = {"portal.png": "/", "admin-rules.png": "/admin/rules"}
    if crawled_blueprint(keycard, "/admin/apps"):
        shots["admin-apps.png"] = "/admin/apps"
    for name, path in shots.items():
        admin_page.goto(keycard.url + path)
        admin_page.screenshot(path=str(out / name), full_page=True)
        assert (out / name).stat().st_size > 10_000
