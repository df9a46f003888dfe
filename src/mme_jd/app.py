"""`mme-jd app MODEL`: look at one input of your own, as the gallery shows its rows.

A small local web page: upload an image, type a text, pick a mode (general, mid, mctd, mme_jd)
and, optionally, the true label; the page answers with the gallery's card for that input (the
image with the image counterfactual's patches shaded, the text with its changed and cue words
marked, each expert's and each counterfactual's class scores, the router's strategy). Changing
the mode re-uses the uploaded image, so the modes compare on the same input. Without an image
the model sees the grey stand-in, as for rows without one.

    mme-jd app my-mme-jd                 # http://127.0.0.1:7860/
    pip install mme-jd[app]              # the extra exists for the record: it adds nothing

Why the standard library's `http.server` and not Gradio: the page is one form and one card,
and the card is rendered by the gallery's own `render_card`, so the app and the gallery cannot
drift apart. `http.server` needs no dependency (Gradio brings dozens of packages, a JavaScript
front end and frequent breaking releases), runs offline, and the page needs no script at all;
the same Content-Security-Policy as the gallery forbids every network load. The trade-off: no
live widgets; each change is a form submission (about a second on a small model).

It serves one person on this machine: it binds to 127.0.0.1 unless `host=` says otherwise,
answers only requests addressed to the host it serves (a guard against DNS rebinding), runs
one inference at a time, takes uploads up to `MAX_UPLOAD_BYTES`, and keeps the last
`KEPT_UPLOADS` images in memory for mode switches.
"""

from __future__ import annotations

import email.parser
import email.policy
import html
import secrets
import socket
import sys
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

__all__ = ["DEFAULT_PORT", "InspectorApp", "make_server", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
KEPT_UPLOADS = 32
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_FORM_STYLE = """
form { display: grid; grid-template-columns: max-content 1fr; gap: 0.4rem 0.8rem; max-width: 48rem;
  padding: 0.8rem; border: 1px solid #ccc; border-radius: 4px; background: #fafafa; }
form textarea { width: 100%; min-height: 3.5rem; font: inherit; }
form button { grid-column: 2; justify-self: start; padding: 0.3rem 1.2rem; }
.error { color: #b71c1c; font-weight: 600; }
"""


class InspectorApp:
    """The app's state and its two pages (the form, the form with a card).

    Args:
        model: an `MMEJDModel` with `.processor`, or a saved folder.
        mode: the mode preselected in the form (default: the model's `config.mode`).
        text_counterfactual / image_counterfactual / cues: as for `gallery.inspect_examples`.
        trust_remote_code: let a model folder run Python code of its own (off: an MME-JD
            folder needs none).
    """

    def __init__(self, model: Any, mode: str | None = None, text_counterfactual: str | None = None,
                 image_counterfactual: str | None = None, cues: Sequence[Any] | None = None,
                 trust_remote_code: bool = False):
        from .evaluation.run import load_model

        self.model, self.processor = load_model(model, trust_remote_code=trust_remote_code)
        config = self.model.config
        self.mode = mode or config.mode
        self.text_counterfactual = text_counterfactual
        self.image_counterfactual = image_counterfactual
        self.cues = list(cues or [])
        self.label_names = [str(config.id2label[i]) for i in range(int(config.num_labels))]
        name = getattr(config, "_name_or_path", "") or (model if isinstance(model, str) else "")
        self.title = "MME-JD: what the model sees" + (f" ({name})" if name else "")
        self._uploads: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- uploads
    def keep_upload(self, data: bytes) -> str:
        """Keep an uploaded image for later mode switches; returns its token."""
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._uploads[token] = data
            while len(self._uploads) > KEPT_UPLOADS:
                self._uploads.popitem(last=False)
        return token

    def upload(self, token: str) -> bytes | None:
        with self._lock:
            return self._uploads.get(token)

    # ---------------------------------------------------------------- pages
    def form(self, text: str = "", mode: str | None = None, label: str = "", token: str = "",
             has_image: bool = False) -> str:
        from .modeling.configuration_mme_jd import MODES

        esc = html.escape
        mode = mode or self.mode
        modes = "".join(f'<option value="{m}"{" selected" if m == mode else ""}>{m}</option>' for m in MODES)
        labels = '<option value="">(unknown)</option>' + "".join(
            f'<option value="{esc(n)}"{" selected" if n == label else ""}>{esc(n)}</option>' for n in self.label_names)
        kept = " (empty: keep the current image)" if has_image else " (empty: no image, the grey stand-in)"
        return (
            '<form method="post" action="/" enctype="multipart/form-data">'
            f'<label for="image">image</label><span><input type="file" id="image" name="image" accept="image/*">'
            f"{esc(kept)}</span>"
            f'<label for="text">text</label><textarea id="text" name="text" required>{esc(text)}</textarea>'
            f'<label for="mode">mode</label><select id="mode" name="mode">{modes}</select>'
            f'<label for="label">true label</label><select id="label" name="label">{labels}</select>'
            f'<input type="hidden" name="upload" value="{esc(token)}">'
            '<button type="submit">inspect</button></form>'
        )

    def page(self, body: str) -> str:
        from .evaluation.gallery import LEGEND_HTML, page

        return page(self.title, f"<style>{_FORM_STYLE}</style><h1>{html.escape(self.title)}</h1>{body}{LEGEND_HTML}",
                    extra_csp="form-action 'self'")

    def inspect(self, fields: dict[str, Any]) -> tuple[HTTPStatus, str]:
        """The page for one submitted form: (status, HTML). A bad input (no text, an unreadable
        image, an unknown mode or label) gives the form again with the problem stated."""
        import datasets

        from .data.images import load_image, normalize_text
        from .evaluation.gallery import inspect_examples, render_card
        from .modeling.configuration_mme_jd import MODES

        text = str(fields.get("text") or "")
        mode = str(fields.get("mode") or self.mode)
        label = str(fields.get("label") or "")
        token = str(fields.get("upload") or "")
        data = fields.get("image") or None
        if data:
            token = self.keep_upload(data)
        elif token:
            data = self.upload(token)
            if data is None:
                token = ""  # forgotten (or never known): no image
        form = self.form(text, mode, label, token, has_image=data is not None)
        try:
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} is not one of {list(MODES)}.")
            if label and label not in self.label_names:
                raise ValueError(f"label {label!r} is not one of the model's labels {self.label_names}.")
            text = normalize_text(text)
            image = load_image(data) if data is not None else None
        except ValueError as error:
            return HTTPStatus.BAD_REQUEST, self.page(form + f'<p class="error">{html.escape(str(error))}</p>')
        columns: dict[str, list] = {"text": [text], "image": [image]}
        features = {"text": datasets.Value("string"), "image": datasets.Image()}
        if label:
            columns["label"] = [self.label_names.index(label)]
            features["label"] = datasets.Value("int64")
        rows = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        with self._lock:  # one inference at a time: the experts are switched on the shared model
            example = inspect_examples(self.model, self.processor, rows, mode=mode,
                                       text_counterfactual=self.text_counterfactual,
                                       image_counterfactual=self.image_counterfactual, cues=self.cues)[0]
        return HTTPStatus.OK, self.page(form + render_card(example, self.label_names, show_row=False))


def _parse_form(content_type: str, body: bytes) -> dict[str, Any]:
    """The fields of a multipart/form-data (or urlencoded) body: strings, and bytes for files."""
    from urllib.parse import parse_qs

    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    if not content_type.startswith("multipart/form-data"):
        raise ValueError(f"expected a multipart/form-data form, got {content_type or 'no content type'!r}.")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        fields[name] = payload if part.get_filename() is not None else payload.decode("utf-8", "replace")
    return fields


class _Handler(BaseHTTPRequestHandler):
    server: "_InspectorServer"
    server_version = "mme-jd-app"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: HTTPStatus, body: str, content_type: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def _host_allowed(self) -> bool:
        """On a loopback address, only requests for a loopback host name (DNS rebinding guard)."""
        if self.server.app_host not in _LOOPBACK:
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return host in _LOOPBACK

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._host_allowed():
            return self._send(HTTPStatus.FORBIDDEN, "unknown host", "text/plain; charset=utf-8")
        path = self.path.split("?", 1)[0]
        if path == "/favicon.ico":
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
            return None
        if path != "/":
            return self._send(HTTPStatus.NOT_FOUND, "not found: the app has one page, /", "text/plain; charset=utf-8")
        app = self.server.app
        return self._send(HTTPStatus.OK, app.page(app.form()))

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_allowed():
            return self._send(HTTPStatus.FORBIDDEN, "unknown host", "text/plain; charset=utf-8")
        app = self.server.app
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_UPLOAD_BYTES:
            return self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              app.page(app.form() + f'<p class="error">the upload must be at most '
                                                    f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB.</p>"))
        body = self.rfile.read(length)
        try:
            fields = _parse_form(self.headers.get("Content-Type", ""), body)
        except ValueError as error:
            return self._send(HTTPStatus.BAD_REQUEST,
                              app.page(app.form() + f'<p class="error">{html.escape(str(error))}</p>'))
        status, page = app.inspect(fields)
        return self._send(status, page)


class _InspectorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: InspectorApp, verbose: bool = False):
        self.app, self.app_host, self.verbose = app, address[0], verbose
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET  # read by the base's __init__
        super().__init__(address, _Handler)


def make_server(model: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, mode: str | None = None,
                text_counterfactual: str | None = None, image_counterfactual: str | None = None,
                cues: Sequence[Any] | None = None, verbose: bool = False,
                trust_remote_code: bool = False) -> ThreadingHTTPServer:
    """The app's HTTP server, bound and not yet serving (`serve_forever()` serves it; port 0
    picks a free port: see `server.server_address`)."""
    app = InspectorApp(model, mode=mode, text_counterfactual=text_counterfactual,
                       image_counterfactual=image_counterfactual, cues=cues, trust_remote_code=trust_remote_code)
    try:
        return _InspectorServer((host, port), app, verbose=verbose)
    except OSError as error:
        raise RuntimeError(f"cannot serve on {host}:{port} ({error.strerror or error}); "
                           "choose another --port.") from None


def serve(model: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **options: Any) -> None:
    """Serve the app until interrupted (Ctrl-C)."""
    server = make_server(model, host=host, port=port, verbose=True, **options)
    bound_host, bound_port = server.server_address[:2]
    if host not in _LOOPBACK:
        print(f"warning: serving on {host}, reachable from other machines; the app has no authentication.",
              file=sys.stderr)
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    print(f"mme-jd app: http://{shown}:{bound_port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
