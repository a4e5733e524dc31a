"""The built wheel is complete: installed away from the checkout, it serves real pages.

``templates/`` and ``static/`` live at the top of the repository, outside the ``sso``
package; the wheel must carry them (as ``sso/templates`` and ``sso/static``) and
``create_app`` must find them there.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the interpreter that has only the installed wheel and the dependencies on its
# path: no editable finder, no checkout, cwd in a scratch directory.
PROBE = """
import json, sys
import sso
from sso import create_app

app = create_app()
client = app.test_client()
page = client.get("/signed-out")
css = client.get("/static/keycard.css")
# The two other apps of ``sso dev`` share the templates and static files.
from sso.demoapp import create_demo_app
from sso.devupstream import create_upstream_app

demo = create_demo_app(issuer="http://127.0.0.1:1", client_id="c", client_secret="s",
                       base_url="http://127.0.0.1:2").test_client().get("/")
upstream_css = create_upstream_app().test_client().get("/static/devupstream.css")
print(json.dumps({
    "demo_status": demo.status_code,
    "upstream_css_status": upstream_css.status_code,
    "sso_file": sso.__file__,
    "finders": [repr(f) for f in sys.meta_path],
    "template_folder": app.template_folder,
    "page_status": page.status_code,
    "page": page.get_data(as_text=True),
    "css_status": css.status_code,
    "css": css.get_data(as_text=True),
}))
css.close()
upstream_css.close()
"""


def _copy_sources(dest: Path) -> None:
    """What a source distribution holds: build there, not in the checkout (no build/ or
    egg-info written into the worktree, no clash between parallel runs)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("sso", "templates", "static"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)


def _pip(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                   cwd=cwd, check=True, capture_output=True, timeout=120)


def test_installed_wheel_serves_templates_and_static(tmp_path, redis_server, prefix):
    src, dist, target, run = (tmp_path / d for d in ("src", "dist", "site", "run"))
    for d in (src, dist, run):
        d.mkdir()
    _copy_sources(src)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src),
         cwd=run)
    (wheel,) = dist.glob("keycard-*.whl")

    # Every template, static file and module of the checkout is in the wheel.
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"sso/{p.relative_to(ROOT).as_posix()}"
                for d in ("templates", "static") for p in (ROOT / d).rglob("*") if p.is_file()}
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "sso").rglob("*")
                 if p.is_file() and p.suffix in {".py", ".yaml"}}
    assert expected - names == set()

    _pip("install", "--no-deps", "--no-compile", "-q", "--target", str(target), str(wheel),
         cwd=run)

    # -S: no site-packages processing, hence no .pth (and no editable finder for ``sso``);
    # the dependencies come from this interpreter's site-packages, after the wheel.
    path = [str(target), *site.getsitepackages()]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SSO_", "PYTHON"))},
        "PYTHONPATH": os.pathsep.join(path),
        "SSO_ENV": "development",
        "SSO_REDIS_URL": redis_server.url,
        "SSO_REDIS_PREFIX": prefix,
    }
    done = subprocess.run([sys.executable, "-S", "-c", PROBE], cwd=run, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert Path(result["sso_file"]).resolve().is_relative_to(target.resolve())
    assert not any("editable" in f.lower() for f in result["finders"])
    assert Path(result["template_folder"]).resolve().is_relative_to(target.resolve())
    assert result["page_status"] == 200, result["page"]
    assert "<title>Signed out · Keycard</title>" in result["page"]
    assert "/static/keycard.css" in result["page"]
    assert result["css_status"] == 200
    assert result["css"] == (ROOT / "static" / "keycard.css").read_text()
    assert result["demo_status"] == 200
    assert result["upstream_css_status"] == 200
