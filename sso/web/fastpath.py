"""Request speed-ups for the hot paths, fenced here because they lean on private APIs.

Each override below replaces a general-purpose step of Werkzeug or Flask with a
direct one that the benchmarks (bench/inprocess.py) showed to be worth it. They
touch private attributes (Werkzeug's ``Request._load_form_data`` and
``_cached_data``, Flask's ``DefaultJSONProvider._app`` and
``_prepare_response_obj``); tests/test_private_apis.py fails loudly when a new
Werkzeug or Flask moves them.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import parse_qsl

import orjson
from flask import Request, Response
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, ClientDisconnected
from werkzeug.sansio.response import Response as SansIOResponse


class KeycardRequest(Request):
    """Flask's request with a direct path for the bodies every OAuth endpoint receives.

    Werkzeug's general form parser (stream wrappers, parser objects, option parsing)
    cost ten times what parsing a url-encoded body itself does: a tenth of a token
    or introspection request. Exact ``application/x-www-form-urlencoded`` with a
    ``Content-Length`` within the limit is read here; everything else (multipart,
    charset parameters, chunked bodies, oversize bodies: 413) goes Werkzeug's way.
    Stricter than Werkzeug 3.1 on purpose: a body that is not UTF-8 or has more than
    ``MAX_FIELDS`` fields is a 400 (Werkzeug read the first as an empty form).
    """

    MAX_FIELDS = 1000

    def _load_form_data(self) -> None:
        if "form" in self.__dict__:
            return
        environ = self.environ
        length = environ.get("CONTENT_LENGTH", "")
        limit = self.max_content_length
        if (environ.get("CONTENT_TYPE") != "application/x-www-form-urlencoded"
                or not (length.isascii() and length.isdigit())
                or "HTTP_TRANSFER_ENCODING" in environ or "stream" in self.__dict__
                or getattr(self, "_cached_data", None) is not None
                or (limit is not None and int(length) > limit)):
            super()._load_form_data()
            return
        raw = environ["wsgi.input"].read(int(length))
        if len(raw) != int(length):
            raise ClientDisconnected()  # the body ended early: 400, as Werkzeug answers
        try:
            items = parse_qsl(raw.decode(), keep_blank_values=True,
                              errors="werkzeug.url_quote", max_num_fields=self.MAX_FIELDS)
        except ValueError:  # UnicodeDecodeError included: not UTF-8, or too many fields
            raise BadRequest("The form body could not be read.") from None
        d = self.__dict__
        d["stream"], d["form"] = io.BytesIO(), self.parameter_storage_class(items)
        d["files"] = self.parameter_storage_class()


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON through orjson: every token, introspection and API answer is JSON, and
    the standard encoder was the largest single cost of building those responses."""

    OPTIONS = orjson.OPT_NON_STR_KEYS

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:  # indent, separators...: the standard library's formatting
            return super().dumps(obj, **kwargs)
        return orjson.dumps(obj, default=self.default, option=self.OPTIONS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return super().loads(s, **kwargs) if kwargs else orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> SansIOResponse:
        if self._app.debug:
            return super().response(*args, **kwargs)  # indented, for people reading it
        body = orjson.dumps(self._prepare_response_obj(args, kwargs), default=self.default,
                            option=self.OPTIONS | orjson.OPT_APPEND_NEWLINE)
        return Response(body, mimetype=self.mimetype)
