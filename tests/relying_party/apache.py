"""Apache httpd with mod_auth_openidc (Debian's ``apache2`` and
``libapache2-mod-auth-openidc``): a certified OpenID Connect relying party in front of an
app, as companies run it. Started in the foreground on a free loopback port, in its own
process group, with every file it writes in a temporary directory.

Two protected locations, both proxied to an echo app that shows what Apache passed on:
``/protected`` (``Require valid-user``) and ``/engineers`` (``Require claim
roles:engineer``). The redirect URI is ``/protected/redirect_uri``; its back-channel
logout endpoint is that URI with ``?logout=backchannel``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import accepts, wait_until

MODULES = Path("/usr/lib/apache2/modules")
PASSED = ("OIDC_CLAIM_preferred_username", "OIDC_CLAIM_roles",
          "OIDC_CLAIM_groups", "OIDC_CLAIM_email", "OIDC_CLAIM_sid")


@dataclass
class ApacheRP:
    url: str  # http://127.0.0.1:<port>
    redirect_uri: str
    workdir: Path

    @property
    def backchannel_uri(self) -> str:
        return self.redirect_uri + "?logout=backchannel"

    def error_log(self) -> str:
        return (self.workdir / "error.log").read_text(errors="replace")


def config(workdir: Path, port: int, issuer: str, client_id: str, secret: str,
           app_port: int) -> str:
    redirect_uri = f"http://127.0.0.1:{port}/protected/redirect_uri"
    passed = "\n".join(f'    RequestHeader set X-Passed-{i} "{name}=%{{{name}}}e"'
                       for i, name in enumerate(PASSED))
    passed += '\n    RequestHeader set X-Passed-User "expr=REMOTE_USER=%{REMOTE_USER}"'
    return f"""
ServerRoot /etc/apache2
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {workdir}/httpd.pid
DefaultRuntimeDir {workdir}
ErrorLog {workdir}/error.log
LogLevel warn auth_openidc:info
LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authn_core_module {MODULES}/mod_authn_core.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule authz_user_module {MODULES}/mod_authz_user.so
LoadModule headers_module {MODULES}/mod_headers.so
LoadModule proxy_module {MODULES}/mod_proxy.so
LoadModule proxy_http_module {MODULES}/mod_proxy_http.so
LoadModule auth_openidc_module {MODULES}/mod_auth_openidc.so
User www-data
Group www-data
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16

OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration
OIDCClientID {client_id}
OIDCClientSecret {secret}
OIDCRedirectURI {redirect_uri}
OIDCCryptoPassphrase {secrets.token_urlsafe(32)}
OIDCScope "openid profile email groups roles"
OIDCPKCEMethod S256
OIDCRemoteUserClaim preferred_username
OIDCSessionType server-cache
OIDCCacheType shm
OIDCHTMLErrorTemplate {workdir}/error.html
OIDCDefaultLoggedOutURL http://127.0.0.1:{port}/goodbye

<Location /protected>
    AuthType openid-connect
    Require valid-user
{passed}
    ProxyPass http://127.0.0.1:{app_port}/protected
</Location>
<Location /engineers>
    AuthType openid-connect
    Require claim roles:engineer
{passed}
    ProxyPass http://127.0.0.1:{app_port}/engineers
</Location>
"""


def echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The protected app: what Apache passed on (REMOTE_USER and the claims)."""
    passed = {}
    for key, value in environ.items():
        if key.startswith("HTTP_X_PASSED_") and "=" in value:
            name, _, claim = value.partition("=")
            passed[name] = claim
    body = json.dumps({"path": environ.get("PATH_INFO", ""), "passed": passed}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


@contextmanager
def running_apache(port: int, issuer: str, client_id: str, secret: str,
                   app_port: int) -> Iterator[ApacheRP]:
    apache = shutil.which("apache2") or "/usr/sbin/apache2"
    if not Path(apache).exists() or not (MODULES / "mod_auth_openidc.so").exists():
        pytest.fail("apache2 and libapache2-mod-auth-openidc are not installed: run .ci/run "
                    "or apt-get install apache2 libapache2-mod-auth-openidc")
    # The children run as www-data: their directory must be theirs to read.
    workdir = Path(tempfile.mkdtemp(prefix="keycard-apache-"))
    os.chmod(workdir, 0o755)
    (workdir / "error.html").write_text("<p>%s: %s</p>\n")
    conf = workdir / "httpd.conf"
    conf.write_text(config(workdir, port, issuer, client_id, secret, app_port))
    proc = subprocess.Popen([apache, "-f", str(conf), "-DFOREGROUND"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or accepts(port), timeout=15)
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"apache2 did not start: {stderr}")
        yield ApacheRP(f"http://127.0.0.1:{port}",
                       f"http://127.0.0.1:{port}/protected/redirect_uri", workdir)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)
