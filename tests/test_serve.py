"""The loopback file server: binding, index, content types, CORS only on JSON, path safety."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.request
from pathlib import Path

import pytest

from sae_circuits import serve as serve_module
from sae_circuits.fsa.automaton import Transition
from sae_circuits.serve import serve
from tests.test_fsa_score_export import fsa_from_firing
from tests.test_graph_export import make_graph

SECRET = "TOP-SECRET-outside-the-served-folder"
EVIL_NAME = "<script>x.html"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text(SECRET)
    root = tmp_path / "served"
    (root / "sub").mkdir(parents=True)
    graph = make_graph()
    graph.save(root / "graph.json")
    graph.save(root / "sub" / "graph.html")
    graph.save(root / "graph.graphml")
    graph.save(root / "graph.dot")
    fsa = fsa_from_firing([[1, 0], [0, 1], [1, 0]], [Transition(0, 1, "token", 0.5)])
    fsa.save(root / "markup.json")
    fsa.save(root / "markup.html")
    (root / "dash.html").write_text("<!DOCTYPE html><title>My dashboard</title><p>hi</p>")
    (root / EVIL_NAME).write_text("<p>evil</p>")
    (root / "broken.json").write_text('{"nodes": [1, 2')
    (root / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    (root / "leak.json").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def server(folder: Path):
    srv = serve(folder, port=0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def raw(srv, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send ``path`` as is (no normalisation); ``(status, headers, body)``."""
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=5)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_binds_loopback_only(folder: Path, server):
    assert server.server_address[0] == "127.0.0.1"
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        with pytest.raises(ValueError, match=f"host '{host}' is not a loopback"):
            serve(folder, port=0, host=host)
    with pytest.raises(NotADirectoryError, match="nope"):
        serve(folder / "nope", port=0)


def test_ipv6_loopback(folder: Path):
    try:
        srv = serve(folder, port=0, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        assert srv.server_address[0] == "::1" and raw(srv, "/dash.html")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_index_groups_and_escapes(server):
    status, headers, body = raw(server, "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff"
    assert "Access-Control-Allow-Origin" not in headers
    assert "Content-Security-Policy" in page and "http://" not in page and "https://" not in page
    assert "<script" not in page and "&lt;script&gt;x.html" in page and 'href="/%3Cscript%3Ex.html"' in page
    sections = {
        h: page.index(h) for h in ("Attribution graphs (2)", "Automata (2)", "Dashboards (2)", "Other files")
    }
    assert list(sections.values()) == sorted(sections.values())
    graphs = page[sections["Attribution graphs (2)"] : sections["Automata (2)"]]
    assert "graph.json" in graphs and "sub/graph.html" in graphs and "graph.graphml" not in graphs
    assert "15 nodes, 17 links" in graphs and "&lt;/script&gt;" in graphs  # the prompt, escaped
    assert "2 states, 1 transitions" in page and "My dashboard" in page
    assert "leak.json" not in page  # a symlink leaving the folder is not listed


def test_api_list(server):
    status, headers, body = raw(server, "/api/list?x=1")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert "Access-Control-Allow-Origin" not in headers
    files = {f["path"]: f for f in json.loads(body)["files"]}
    assert list(files) == sorted(files)
    assert {p: f["kind"] for p, f in files.items() if f["kind"] != "other"} == {
        "graph.json": "graph", "sub/graph.html": "graph", "markup.json": "automaton", "markup.html": "automaton",
        "dash.html": "dashboard", EVIL_NAME: "dashboard",
    }  # fmt: skip
    assert files["graph.json"]["summary"].startswith("15 nodes, 17 links; prompt ")
    assert files["broken.json"]["broken"] and files["broken.json"]["summary"].startswith("broken: ")
    assert not files["graph.json"]["broken"] and files["graph.dot"]["size"] > 0
    assert "plot.png" not in files and not json.loads(body)["truncated"]  # not something the library writes
    assert files[EVIL_NAME]["url"] == "/%3Cscript%3Ex.html" and "leak.json" not in files


def test_graph_json_loads_back_with_cors(folder: Path, server):
    host, port = server.server_address[:2]
    with urllib.request.urlopen(f"http://{host}:{port}/graph.json?cache=bust") as response:
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.read() == (folder / "graph.json").read_bytes()


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/dash.html", "text/html; charset=utf-8"),
        ("/%3Cscript%3Ex.html", "text/html; charset=utf-8"),
        ("/sub/graph.html", "text/html; charset=utf-8"),
        ("/graph.graphml", "application/xml"),
        ("/graph.dot", "text/plain; charset=utf-8"),
        ("/broken.json", "application/json"),
    ],
)
def test_content_types_and_cors_only_on_json(folder: Path, server, path: str, content_type: str):
    status, headers, body = raw(server, path)
    assert status == 200 and headers["Content-Type"] == content_type
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    assert ("Access-Control-Allow-Origin" in headers) == path.endswith(".json")
    assert body == (folder / urllib.request.url2pathname(path.lstrip("/"))).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt", "/../../etc/passwd", "/%2e%2e/secret.txt", "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2fsecret.txt", "/sub/../../secret.txt", "/..%5csecret.txt", "/sub%5c..%5c..%5csecret.txt",
        "//etc/passwd", "/%2fetc/passwd", "/leak.json", "/%00", "/graph.json%00.txt",
    ],
)  # fmt: skip
def test_traversal_is_refused(server, path: str):
    status, _, body = raw(server, path)
    assert status in (403, 404) and SECRET.encode() not in body and b"root:" not in body


def test_symlink_outside_is_forbidden(server):
    assert raw(server, "/leak.json")[0] == 403


def test_missing_and_directories_are_404(server):
    for path in ("/missing.json", "/sub", "/sub/", "/sub/missing.html"):
        status, headers, _ = raw(server, path)
        assert status == 404 and headers["Cache-Control"] == "no-store"


def test_head(folder: Path, server):
    status, headers, body = raw(server, "/graph.json", method="HEAD")
    assert status == 200 and body == b"" and headers["Access-Control-Allow-Origin"] == "*"
    assert int(headers["Content-Length"]) == (folder / "graph.json").stat().st_size
    status, headers, body = raw(server, "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert raw(server, "/missing", method="HEAD")[0] == 404


def test_foreign_host_header_is_refused(server):
    """A page on evil.example re-pointed (DNS rebinding) at 127.0.0.1 sends its own Host."""
    assert raw(server, "/dash.html", host="evil.example")[0] == 403
    assert raw(server, "/api/list", host="evil.example:8000")[0] == 403
    for host in ("localhost:1234", "127.0.0.1", "[::1]:80"):
        assert raw(server, "/dash.html", host=host)[0] == 200


def test_broken_json_does_not_break_the_index(folder: Path, server):
    (folder / "deep.json").write_text("[" * 100_000)  # RecursionError territory
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    status, _, body = raw(server, "/")
    assert status == 200 and b"deep.json" in body and b"binary.json" in body
    assert body.count(b"class=broken") >= 3


def test_run_prints_the_url_and_stops_on_ctrl_c(folder: Path, monkeypatch, capsys):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_module._Server, "serve_forever", interrupted)
    serve_module.run(folder, port=0)
    out = capsys.readouterr().out
    assert "at http://127.0.0.1:" in out and out.rstrip().endswith("stopped")


def test_cli_serve_refuses_a_public_host_and_a_missing_folder(tmp_path, capsys):
    from sae_circuits.cli import main

    assert main(["serve", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "0.0.0.0" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_only_what_the_library_writes_is_listed_and_served(folder: Path, server):
    """Dotfiles, dot-directories (.git, .venv), temporaries and foreign files: neither listed nor served."""
    hidden = {
        ".git/config.json": "{}", ".venv/lib/site.html": "<p>", ".env.json": "{}", ".graph.json.x1y2.tmp": "{}",
        "graph.json.tmp": "{}", "sub/.cache/page.html": "<p>", "notes.txt": "private", "data.csv": "1,2",
        "weights.safetensors": "x",
    }  # fmt: skip
    for rel, text in hidden.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    (folder / "alias.json").symlink_to(folder / ".git" / "config.json")  # a link to a hidden file
    listed = {f["path"] for f in json.loads(raw(server, "/api/list")[2])["files"]}
    page = raw(server, "/")[2].decode()
    for rel in [*hidden, "alias.json", "plot.png"]:
        assert rel not in listed and f">{rel}<" not in page, rel
        assert raw(server, "/" + rel)[0] == 404, rel
    assert {"graph.json", "sub/graph.html", "graph.graphml", "graph.dot", "dash.html"} <= listed
    assert raw(server, "/graph.dot")[0] == 200


def test_listing_is_bounded_and_says_when_cut(folder: Path, server, monkeypatch):
    deep = folder.joinpath(*"abcdefghij")
    deep.mkdir(parents=True)
    (deep / "deep.json").write_text("{}")
    (folder / ".git" / "objects").mkdir(parents=True)
    for i in range(50):
        (folder / ".git" / "objects" / f"{i}.json").write_text("{}")  # never walked
    listing = json.loads(raw(server, "/api/list")[2])
    assert listing["truncated"]  # the deep folder was not entered
    assert "a/b/c/d/e/f/g/h/i/j/deep.json" not in {f["path"] for f in listing["files"]}
    assert not any(".git" in f["path"] for f in listing["files"])
    assert "Listing cut" in raw(server, "/")[2].decode()
    assert raw(server, "/a/b/c/d/e/f/g/h/i/j/deep.json")[0] == 200  # not listed, still served
    monkeypatch.setattr(serve_module, "MAX_DEPTH", 20)
    listing = json.loads(raw(server, "/api/list")[2])
    assert not listing["truncated"] and "a/b/c/d/e/f/g/h/i/j/deep.json" in {
        f["path"] for f in listing["files"]
    }
    assert "Listing cut" not in raw(server, "/")[2].decode()
    monkeypatch.setattr(serve_module, "MAX_LISTED", 3)
    listing = json.loads(raw(server, "/api/list")[2])
    assert listing["truncated"] and len(listing["files"]) == 3
    assert "Listing cut" in raw(server, "/")[2].decode()
    monkeypatch.setattr(serve_module, "MAX_LISTED", 10_000)
    monkeypatch.setattr(serve_module, "MAX_SCANNED", 5)
    entries, truncated = serve_module.scan_files(folder)
    assert truncated and len(entries) <= 5


def test_a_client_that_leaves_prints_no_traceback(server, monkeypatch, capsys):
    def leave(self, head):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(serve_module._Handler, "_respond", leave)
    for exc in (BrokenPipeError, ConnectionResetError):
        monkeypatch.setattr(
            serve_module._Handler, "_respond", lambda self, head, e=exc: (_ for _ in ()).throw(e())
        )
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            raw(server, "/")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err

    def bug(self, head):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(serve_module._Handler, "_respond", bug)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        raw(server, "/")
    assert "a genuine bug" in capsys.readouterr().err  # other errors are still reported


def test_localhost_is_accepted_as_loopback(folder: Path):
    import socket

    try:
        resolved = {info[4][0] for info in socket.getaddrinfo("localhost", None)}
    except OSError:
        pytest.skip("localhost does not resolve here")
    if not all(serve_module._is_loopback(str(a)) for a in resolved):
        pytest.skip("localhost resolves to a non-loopback address here")
    srv = serve(folder, port=0, host="localhost")
    try:
        assert serve_module._is_loopback(srv.server_address[0])
    finally:
        srv.server_close()


def test_bad_port_and_busy_port(folder: Path, server):
    for port in (70000, -1):
        with pytest.raises(ValueError, match=f"port {port} is not a TCP port"):
            serve(folder, port=port)
    busy = server.server_address[1]
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1 port {busy}"):
        serve(folder, port=busy)


def test_automaton_format_matches_the_exporter():
    from sae_circuits.fsa.export import FORMAT

    assert serve_module._AUTOMATON_FORMAT == FORMAT


def test_cli_serve_errors_are_one_line(folder: Path, server, capsys):
    from sae_circuits.cli import main

    busy = server.server_address[1]
    assert main(["serve", str(folder), "--port", str(busy)]) == 2
    err = capsys.readouterr().err
    assert f"port {busy}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    for port in ("70000", "-1"):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", str(folder), "--port", port])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --port: {port} is not a TCP port" in err and "Traceback" not in err


def test_the_viewer_prefixes_reach_the_listing_and_the_graphs(folder: Path, server):
    """circuit-tracer's front end asks for /data/graph-metadata.json and /graph_data/<slug>.json;
    both are answered whether or not the folder holds its own graph-metadata.json."""
    from sae_circuits.writers.json_file import update_graph_metadata

    for written in (False, True):
        if written:
            update_graph_metadata(folder / "graph.json")
        for path in ("/graph-metadata.json", "/data/graph-metadata.json"):
            status, _, body = raw(server, path)
            assert status == 200 and "graph" in [g["slug"] for g in json.loads(body)["graphs"]], (
                written,
                path,
            )
        for path in ("/graph_data/graph.json", "/data/graph.json"):
            status, _, body = raw(server, path)
            assert status == 200 and body == (folder / "graph.json").read_bytes(), (written, path)
    assert raw(server, "/graph_data/../secret.txt")[0] in (403, 404)
