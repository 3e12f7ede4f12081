"""A loopback-only HTTP server for a folder of exported graphs, automata and dashboards (stdlib only).

    $ sae-circuits serve out/        # then open http://127.0.0.1:8000/

>>> import http.client, json, threading
>>> with sc.spliced(model, transcoders):
...     graph = sc.attribute(model, "<p>hi</p>", max_feature_nodes=0)
>>> graph.save("out/hi.json").name
'hi.json'
>>> server = serve("out", port=0)   # port 0: any free port
>>> threading.Thread(target=server.serve_forever, daemon=True).start()
>>> client = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
>>> client.request("GET", "/api/list")
>>> [(f["path"], f["kind"]) for f in json.loads(client.getresponse().read())["files"]]
[('hi.json', 'graph')]
>>> client.close(); server.shutdown(); server.server_close()

Only what the library writes is served: ``.json`` (graphs, automata, ``cfg.json``, metrics),
``.html`` (graph and automaton views, dashboards) and every suffix of the export writers
(:mod:`sae_circuits.writers`: ``.graphml``, ``.dot``, ``.csv``, ...; a suffix that other programs
write too, such as ``.csv``, only when the file starts as the writer starts it); never a dotfile,
nothing under a dot-directory (``.git``, ``.venv``) and no temporary (``*.tmp``, ``.name.*.tmp``).

Routes (GET and HEAD; query strings ignored): ``/``, an index of those files under the folder
(recursive, sorted) grouped as attribution graphs, automata, dashboards (other ``.html``) and other
files, with sizes and cheap summaries, a JSON file that does not parse listed as broken (no script,
no network, every name escaped); ``/api/list``, the same as JSON ``{"files": [<Entry>, ...],
"truncated": bool}``; ``/graph-metadata.json`` (also ``/data/graph-metadata.json``), the
attribution-graph front end's list of graphs: the folder's own file when it has one (``sae-circuits
graph`` writes it), else one made from the listed graph JSONs (slug = the path without ``.json``);
``/<path>``, that file, content type by suffix. Other paths and directories: 404.
The listing is bounded: it skips dot-directories, goes at most ``MAX_DEPTH`` folders down, looks at
most at ``MAX_SCANNED`` directory entries and lists at most ``MAX_LISTED`` files, and says so
when it was cut.

Every response has ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``. Only
``.json`` files get ``Access-Control-Allow-Origin: *``, so that the public attribution-graph front
end, on another origin, can fetch ``http://127.0.0.1:8000/<file>.json``; nothing else (pages,
``/api/list``, other files) gets CORS headers. Any web page then open can read those JSON files
too: serve a folder that holds nothing private.

Safety: binds loopback only (127.0.0.0/8, ::1); answers only a loopback or ``localhost`` ``Host``
(else 403: no DNS rebinding). A path with ``..``, a backslash or a NUL (percent-encoded too), or
resolving (``Path.resolve``, symlinks included) outside the folder gets 403; the listing skips
symlinks that leave the folder.
"""

from __future__ import annotations

import html
import ipaddress
import json
import os
import re
import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast
from urllib.parse import quote, unquote, urlsplit

from sae_circuits import writers  # stdlib only until a file is written or loaded
from sae_circuits.writers import json_file

# circuit-tracer's front end asks for the listing and the graphs under these prefixes
_VIEWER_PREFIXES = ("/data/", "/graph_data/")

# sae_circuits.fsa.export.FORMAT, copied: importing sae_circuits.fsa would load torch (tests check they agree)
_AUTOMATON_FORMAT = "sae_circuits.feature_automaton"

_TEXT = "text/plain; charset=utf-8"
_TYPES = {
    ".html": "text/html; charset=utf-8", ".json": "application/json", ".graphml": "application/xml",
    ".xml": "application/xml", ".dot": _TEXT, ".txt": _TEXT, ".md": _TEXT, ".csv": "text/csv; charset=utf-8",
    ".png": "image/png", ".svg": "image/svg+xml", ".css": "text/css", ".js": "text/javascript",
}  # fmt: skip
SERVED_SUFFIXES = frozenset({".json", ".html", *writers.suffixes()})  # dashboards, cards + the export writers
_SIGNATURES = {s: tuple(t.encode() for t in texts) for s, texts in writers.signatures().items()}
MAX_DEPTH = 8  # folders below the served one that the listing enters
MAX_SCANNED = 20_000  # directory entries the listing looks at, per request
MAX_LISTED = 2_000  # files the listing shows
_HTML_KINDS = {"Attribution graph": "graph", "Feature automaton": "automaton"}  # our exporters' <title>s
_GROUPS = {
    "graph": "Attribution graphs",
    "automaton": "Automata",
    "dashboard": "Dashboards",
    "other": "Other files",
}
_MAX_PARSE = 64 << 20  # larger JSON files are classified from their first bytes, not parsed


@dataclass(frozen=True)
class Entry:
    """One file of the listing."""

    path: str  # relative to the served folder, "/"-separated
    url: str  # its percent-encoded URL path on the server
    kind: str  # "graph", "automaton", "dashboard" or "other"
    size: int  # bytes
    summary: str  # one line (nodes/links and prompt, states/transitions, a page's <title>) or ""
    broken: bool = False  # a .json file that does not parse


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_address(host: str) -> str | None:
    """``host`` if it is a loopback IP address; for a name (``localhost``) that resolves only to loopback
    addresses, the first of them (IPv4 first); else None."""
    if _is_loopback(host):
        return host
    try:
        ipaddress.ip_address(host)
        return None  # an address, not loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(_is_loopback(a) for a in addresses):
        return None
    return sorted(addresses, key=lambda a: ":" in a)[0]


def _viewer_path(path: str, root: Path) -> str:
    """``/data/x`` and ``/graph_data/x`` (the attribution-graph front end's requests) as ``/x``,
    unless the folder really has such a subfolder."""
    for prefix in _VIEWER_PREFIXES:
        if path.startswith(prefix) and not (root / prefix.strip("/")).is_dir():
            return "/" + path[len(prefix) :]
    return path


def _local_host_header(host: str | None) -> bool:
    """Whether a ``Host`` header names this machine (absent, as HTTP/1.0 may: allowed)."""
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:  # e.g. an unclosed "[::1"
        return False
    return host is None or _is_loopback(name) or name == "localhost"


def _head(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(64 << 10).decode("utf-8", errors="replace")


def _one_line(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _classify(path: Path, size: int) -> tuple[str, str, bool]:
    """``(kind, summary, broken)`` of one file; never raises on a bad file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".html":
            match = re.search(r"<title>([^<]*)</title>", _head(path), re.IGNORECASE)
            title = match.group(1).strip() if match else ""
            return _HTML_KINDS.get(title, "dashboard"), _one_line(html.unescape(title)), False
        if suffix != ".json":
            return "other", "", False
        if size > _MAX_PARSE:  # our writers put these keys first
            head = _head(path)
            kind = "automaton" if _AUTOMATON_FORMAT in head else "graph" if '"qParams"' in head else "other"
            return kind, f"{size >> 20} MiB, not summarised", False
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: "[[[[..." nested too deep
        return "other", _one_line(f"broken: {err}", 120), True

    def count(value: object) -> object:
        return len(value) if isinstance(value, list) else "?"

    if isinstance(raw, dict) and {"metadata", "qParams", "nodes", "links"} <= raw.keys():
        prompt = raw["metadata"].get("prompt") if isinstance(raw["metadata"], dict) else None
        text = f"; prompt {_one_line(prompt)!r}" if isinstance(prompt, str) else ""
        return "graph", f"{count(raw['nodes'])} nodes, {count(raw['links'])} links{text}", False
    if isinstance(raw, dict) and raw.get("format") == _AUTOMATON_FORMAT:
        return (
            "automaton",
            f"{count(raw.get('states'))} states, {count(raw.get('transitions'))} transitions",
            False,
        )
    return "other", "JSON", False


def servable(rel: str) -> bool:
    """Whether the "/"-separated path ``rel`` (relative to the served folder) may be listed or served:
    one of the library's suffixes, no part hidden (a dotfile or under a dot-directory), no temporary."""
    parts = [p for p in rel.split("/") if p]
    return (
        bool(parts)
        and not any(p.startswith(".") for p in parts)
        and not parts[-1].lower().endswith(".tmp")
        and Path(parts[-1]).suffix.lower() in SERVED_SUFFIXES
    )


def _starts_right(path: Path) -> bool:
    """Whether ``path`` starts as the writers of its suffix start their files (always true for a
    suffix whose writers declare no ``SIGNATURE``); an unreadable file does not."""
    expected = _SIGNATURES.get(path.suffix.lower())
    if not expected:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(max(len(s) for s in expected))
    except OSError:
        return False
    return any(head.startswith(s) for s in expected)


def scan_files(directory: str | os.PathLike[str], cache: dict | None = None) -> tuple[list[Entry], bool]:
    """``(entries, truncated)``: the servable files under ``directory`` (see :func:`servable`; sorted by
    path; symlinks leaving it skipped), bounded by ``MAX_DEPTH``, ``MAX_SCANNED`` and ``MAX_LISTED``;
    ``truncated`` says whether a bound cut the listing. ``cache`` (a dict kept between calls) spares
    re-reading files whose size and mtime have not changed."""
    root, cache = Path(directory).resolve(), {} if cache is None else cache
    entries: list[Entry] = []
    scanned, truncated = 0, False
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = []
                for child in it:
                    scanned += 1
                    if scanned > MAX_SCANNED:
                        truncated = True
                        break
                    children.append(child)
        except OSError:
            continue  # unreadable
        for child in children:
            if child.name.startswith("."):
                continue  # dotfiles, .git, .venv, hidden temporaries
            path = Path(child.path)
            try:
                is_dir = child.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if depth < MAX_DEPTH:
                    stack.append((path, depth + 1))
                else:
                    truncated = True
                continue
            rel = path.relative_to(root).as_posix()
            if not servable(rel):
                continue
            try:
                target, stat = path.resolve(), path.stat()
            except (OSError, RuntimeError):
                continue  # a broken or looping symlink
            if not target.is_relative_to(root) or not target.is_file():
                continue
            if not servable(target.relative_to(root).as_posix()):
                continue  # a link to a hidden file or a temporary
            if not _starts_right(target):
                continue  # e.g. a .csv that no writer of the library wrote
            if len(entries) >= MAX_LISTED:
                truncated = True
                break
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if key not in cache:
                cache[key] = _classify(target, stat.st_size)
            url = "/" + quote(rel, safe="/", errors="surrogateescape")
            entries.append(Entry(rel, url, cache[key][0], stat.st_size, *cache[key][1:]))
        if truncated and (scanned > MAX_SCANNED or len(entries) >= MAX_LISTED):
            break  # a bound was hit: stop walking
    return sorted(entries, key=lambda e: e.path), truncated


def list_files(directory: str | os.PathLike[str], cache: dict | None = None) -> list[Entry]:
    """The entries of :func:`scan_files` (bounded; whether it was cut is not said).

    >>> with sc.spliced(model, transcoders):
    ...     g = sc.attribute(model, "<p>hi</p>", max_feature_nodes=0)
    >>> paths = g.save("graphs/hi.json"), g.save("graphs/hi.html"), g.save("graphs/hi.csv")
    >>> [(e.path, e.kind) for e in list_files("graphs")]
    [('hi.csv', 'other'), ('hi.html', 'graph'), ('hi.json', 'graph')]
    >>> list_files("graphs")[-1].summary
    "... nodes, ... links; prompt '<p>hi</p>'"
    """
    return scan_files(directory, cache)[0]


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def index_html(entries: list[Entry], title: str, truncated: bool = False) -> str:
    """The index page: server-rendered, every name escaped, no script at all (CSP ``default-src 'none'``);
    ``truncated`` adds a line saying that the listing was cut."""
    esc, parts = html.escape, []
    for kind, heading in _GROUPS.items():
        rows = [
            f'<tr{" class=broken" if e.broken else ""}><td><a href="{esc(e.url)}">{esc(e.path)}</a></td>'
            f"<td class=n>{_size(e.size)}</td><td>{esc(e.summary)}</td></tr>"
            for e in entries if e.kind == kind
        ]  # fmt: skip
        if rows:
            parts.append(f"<h3>{heading} ({len(rows)})</h3><table>{''.join(rows)}</table>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{esc(title)}</title>
<style>
body{{font:13px system-ui,sans-serif;margin:16px;color:#222}}
td{{padding:2px 12px 2px 0}} .n{{text-align:right}}
.broken td{{color:#d62728}}
</style></head><body>
<h2>{esc(title)}</h2>
{"".join(parts) or "<p>No files.</p>"}{_CUT if truncated else ""}
</body></html>
"""


_CUT = (
    f"<p class=cut>Listing cut: it shows at most {MAX_LISTED} files, {MAX_DEPTH} folders deep, out of the "
    f"first {MAX_SCANNED} entries; serve a smaller folder to see everything.</p>"
)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "sae-circuits"

    def do_GET(self) -> None:
        """Answer a GET: the index, ``/api/list`` or a file (module docstring)."""
        self._respond(head=False)

    def do_HEAD(self) -> None:
        """Answer a HEAD: the headers a GET would send, no body."""
        self._respond(head=True)

    def end_headers(self) -> None:
        """Add ``Cache-Control: no-store`` and ``nosniff`` to every response, errors included."""
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Log the request to stderr only when the server is ``verbose``."""
        if self.server.verbose:
            super().log_message(format, *args)

    def _ok(self, content_type: str, length: int, cors: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        if cors:  # .json files only: see the module docstring
            self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()

    def _graph_metadata(self, root: Path, head: bool) -> None:
        """The front end's ``graph-metadata.json`` for a folder that has none: every listed graph
        JSON, slug = its path without ``.json``."""
        entries, _ = scan_files(root, self.server.cache)
        # graphs too large to parse on each request (see _MAX_PARSE) are left out of the listing
        files = [
            e.path
            for e in entries
            if e.kind == "graph" and e.path.lower().endswith(".json") and e.size <= _MAX_PARSE
        ]
        body = json.dumps(json_file.graph_metadata(root, files)).encode()
        self._ok(_TYPES[".json"], len(body), cors=True)
        if not head:
            self.wfile.write(body)

    def _respond(self, head: bool) -> None:
        if not _local_host_header(self.headers.get("Host")):
            return self.send_error(403, "Host must be a loopback address")
        path, root = unquote(urlsplit(self.path).path, errors="surrogateescape"), self.server.root
        if path in ("", "/", "/api/list"):
            entries, truncated = scan_files(root, self.server.cache)
            if path == "/api/list":
                body, content_type = (
                    json.dumps({"files": [asdict(e) for e in entries], "truncated": truncated}).encode(),
                    _TYPES[".json"],
                )
            else:
                page = index_html(entries, f"sae-circuits: {root.name}", truncated)
                body = page.encode("utf-8", errors="replace")
                content_type = _TYPES[".html"]
            self._ok(content_type, len(body))
            if not head:
                self.wfile.write(body)
            return None
        path = _viewer_path(path, root)
        if path == "/" + json_file.GRAPH_METADATA and not (root / json_file.GRAPH_METADATA).is_file():
            return self._graph_metadata(root, head)
        parts = [p for p in path.split("/") if p]
        if "\\" in path or "\0" in path or ".." in parts:
            return self.send_error(403)
        if not servable("/".join(parts)):  # hidden, a temporary, or not something the library writes
            return self.send_error(404)
        try:
            target = root.joinpath(*parts).resolve()
            if not target.is_relative_to(root):
                return self.send_error(403)
            if not servable(target.relative_to(root).as_posix()):  # a link to a hidden file
                return self.send_error(404)
            if not _starts_right(target):  # e.g. a .csv that no writer of the library wrote
                return self.send_error(404)
            f = target.open("rb") if target.is_file() else None
        except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop
            f = None
        if f is None:  # missing, or a directory (only "/" is listed)
            return self.send_error(404)
        with f:
            suffix = target.suffix.lower()
            self._ok(
                _TYPES.get(suffix) or writers.media_type(suffix) or "application/octet-stream",
                os.fstat(f.fileno()).st_size,
                suffix == ".json",
            )
            if not head:
                try:
                    shutil.copyfileobj(f, self.wfile)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    cache: dict[tuple[str, int, int], tuple[str, str, bool]]  # list_files's: (path, size, mtime) -> _classify

    def __init__(self, address: tuple[str, int], root: Path, verbose: bool) -> None:
        self.root, self.verbose, self.cache = root, verbose, {}
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET  # for the socket
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Print the traceback of a failed request, except when the client just went away."""
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipe, ConnectionReset: the client left
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def serve(
    directory: str | os.PathLike[str], port: int = 8000, host: str = "127.0.0.1", verbose: bool = False
) -> ThreadingHTTPServer:
    """A server for ``directory``, bound to ``host:port`` but not started; port 0 picks a free port.
    ``host`` must be a loopback address or a name resolving only to loopback (``localhost``);
    ``verbose`` logs each request to stderr.

    >>> server = serve(".", port=0)   # port 0: any free port
    >>> server.server_address[0]
    '127.0.0.1'
    >>> server.server_close()   # (server.serve_forever() would answer requests until shut down)
    >>> serve(".", host="0.0.0.0")
    Traceback (most recent call last):
    ValueError: host '0.0.0.0' is not a loopback address ...
    """
    address = _loopback_address(host)
    if address is None:
        raise ValueError(
            f"host {host!r} is not a loopback address (127.0.0.0/8 or ::1, or a name such as localhost "
            "that resolves only to them); this server is local only"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is not a TCP port (0 to 65535; 0 picks a free one)")
    root = Path(directory).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"cannot serve {str(directory)!r}: not an existing directory")
    try:
        return _Server((address, port), root, verbose)
    except OSError as err:  # e.g. the port is busy
        raise OSError(err.errno, f"cannot listen on {host} port {port}: {err.strerror or err}") from None


def run(
    directory: str | os.PathLike[str], port: int = 8000, host: str = "127.0.0.1", verbose: bool = False
) -> None:
    """Serve ``directory`` until Ctrl-C, printing the URL first.

    Not run here, since it blocks until Ctrl-C:

    >>> run("out")   # doctest: +SKIP
    serving /home/me/out at http://127.0.0.1:8000/ (Ctrl-C to stop)
    """
    server = serve(directory, port, host, verbose)
    # An AF_INET/AF_INET6 server: (host, port, ...), never the str/bytes of a Unix socket.
    address, bound = cast(tuple[str, int], server.server_address[:2])
    url = f"http://[{address}]:{bound}/" if ":" in str(address) else f"http://{address}:{bound}/"
    print(f"serving {Path(directory).resolve()} at {url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
