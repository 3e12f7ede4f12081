"""Stage circuit-tracer's attribution-graph viewer (its bundled front end) for the browser test,
with every script it loads served from the same folder: no request leaves 127.0.0.1.

    python tools/fetch_viewer.py [--dest build/viewer]   # prints the staged folder

What comes from where (all pinned and hash-checked; only the package registries are contacted):

- circuit-tracer 0.5.0 from PyPI (``pip download --no-deps --require-hashes``): its
  ``circuit_tracer/frontend/assets`` (index.html, util.js, attribution_graph/, ...).
- index.html loads six scripts from transformer-circuits.pub and unpkg.com; each comes from the
  npm registry instead (tarball, sha512 integrity from the registry's metadata):
  d3.js -> d3 7.9.0 ``dist/d3.min.js`` (the viewer is written for d3 v7: ``(event, d)``
  listeners, d3.pointer, d3.sort, d3.group), after d3-collection 1.0.7 (jetpack's nestBy calls
  its nest()); jetpack_2024-07-20.js -> d3-jetpack 2.3.0 ``build/d3-jetpack.cjs`` (append('div.c'),
  at, st, appendMany, selectAppend, translate, parent, conventions, drawAxis, nestBy, clamp),
  loaded through a three-line CommonJS shim whose require() is the global d3, plus
  ``c.drawAxis(svg)`` on conventions() (1wheel's jetpack has it; the npm release has
  d3.drawAxis(c) only). (The package's
  d3v7+jetpack.js bundle holds two copies of d3-selection and patches the one d3.select does not
  use; its UMD build resets ``window.d3``.) npy_v0.js -> npyjs 1.2.0 ``dist/index.js`` (an ES
  module; ``window.npyjs.parse(arrayBuffer)`` is the one call the viewer makes), dagre 0.8.5 and
  pako 2.1.0 ``dist/`` (the files unpkg serves), hotserver-client-ws.js (a development
  live-reload client) -> a no-op.

Everything is cached under ``DEST/circuit-tracer-<version>/`` (``build/`` is ignored by git): a
second run with the stamp in place does no network at all.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

CT_VERSION = "0.5.0"
CT_WHEEL = f"circuit_tracer-{CT_VERSION}-py3-none-any.whl"
CT_SHA256 = "e457e6558e1c9eb0d3d7c54ce2298492b4e919a4f7f2b8b7e217427284fdc802"
ASSETS = "circuit_tracer/frontend/assets/"
LIB = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/"

# npm package, version, integrity (from https://registry.npmjs.org/<pkg>), file in the tarball.
NPM = {
    "d3.min.js": (
        "d3",
        "7.9.0",
        "sha512-e1U46jVP+w7Iut8Jt8ri1YsPOvFpg46k+K8TpCb0P+zjCkjkPnV7WzfDJzMHy1LnA+wj5pLT1wjO901gLXeEhA==",
        "package/dist/d3.min.js",
    ),
    "d3-collection.min.js": (
        "d3-collection",
        "1.0.7",
        "sha512-ii0/r5f4sjKNTfh84Di+DpztYwqKhEyUlKoPrzUFfeSkWxjW49xU2QzO9qrPrNkpdI0XJkfzvmTu8V2Zylln6A==",
        "package/dist/d3-collection.min.js",
    ),
    "d3-jetpack.js": (
        "d3-jetpack",
        "2.3.0",
        "sha512-P6cgpLIKudalA5sohATXeZ78fHWcmXbAyPXYNIvxi8lc6qjRaNMggx1O/tcdIBTyTM26pTMpHPJI0N1FhPIzTg==",
        "package/build/d3-jetpack.cjs",
    ),
    "npyjs.js": (
        "npyjs",
        "1.2.0",
        "sha512-HrooNo+/Q7Vx/gQFaSoiveX0xVkYlQ+jOcgp2WhfGt1C8qdANeK480Sl0s2RWe0+Hf532h45BEitCX3jkddK2Q==",
        "package/dist/index.js",
    ),
    "dagre.min.js": (
        "dagre",
        "0.8.5",
        "sha512-/aTqmnRta7x7MCCpExk7HQL2O4owCT2h8NT//9I1OQ9vt29Pa0BzSAkR5lwFUcQ7491yVi/3CXU9jQ5o0Mn2Sw==",
        "package/dist/dagre.min.js",
    ),
    "pako.min.js": (
        "pako",
        "2.1.0",
        "sha512-w+eufiZ1WuJYgPXbV/PO3NCMEc3xqylkKHzp8bxp1uW4qaSNQUkwmLLEc3kKsfz8lpV1F8Ht3U1Cm+9Srog2ug==",
        "package/dist/pako.min.js",
    ),
}

# jetpack's CommonJS build, loaded as published: require() answers with the global d3 (v7 plus
# d3-collection, whose nest() its nestBy uses), and what it exports is added to that d3. The one
# thing the viewer calls that the npm release lacks is ``c.drawAxis(svg)`` on what conventions()
# returns (1wheel's jetpack adds it there); it is added here with the package's own drawAxis(c).
JETPACK = (
    "<script>window.module = {exports: {}}; window.exports = module.exports; window.require = () => d3</script>\n"
    "<script src='./lib/d3-jetpack.js'></script>\n"
    "<script>Object.assign(d3, module.exports); delete window.module; delete window.exports; "
    "delete window.require\n"
    "{ const conventions = d3.conventions\n"
    "  d3.conventions = c => Object.assign(c = conventions(c), "
    "{drawAxis: svg => d3.drawAxis({...c, svg: svg || c.svg})}) }</script>"
)

# Each remote script tag of index.html, and what replaces it (the page keeps its order).
SCRIPTS = {
    f"<script src='{LIB}hotserver-client-ws.js'></script>": "<script src='./lib/hotserver-client-ws.js'></script>",
    f"<script src='{LIB}d3.js'></script>": (
        "<script src='./lib/d3-collection.min.js'></script>\n<script src='./lib/d3.min.js'></script>"
    ),
    f"<script src='{LIB}jetpack_2024-07-20.js'></script>": JETPACK,
    f"<script src='{LIB}npy_v0.js'></script>": (
        "<script type='module'>import * as npyjs from './lib/npyjs.js'; window.npyjs = npyjs</script>"
    ),
    "<script src='https://unpkg.com/dagre@0.8.5/dist/dagre.min.js'></script>": "<script src='./lib/dagre.min.js'></script>",
    "<script src='https://unpkg.com/pako@2.1.0/dist/pako.min.js'></script>": "<script src='./lib/pako.min.js'></script>",
}
HOTSERVER_STUB = "// hotserver-client-ws.js: circuit-tracer's development live-reload client; a no-op here.\n"

# What the stamp records: a change to any pin re-stages.
MANIFEST = json.dumps(
    {"circuit-tracer": [CT_VERSION, CT_SHA256], "npm": NPM, "scripts": SCRIPTS, "stub": HOTSERVER_STUB},
    sort_keys=True,
)


def staged_dir(dest: Path) -> Path:
    return dest / f"circuit-tracer-{CT_VERSION}"


def _download_wheel(cache: Path) -> Path:
    wheel = cache / CT_WHEEL
    if not (wheel.exists() and _sha256(wheel) == CT_SHA256):
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "req.txt"
            req.write_text(f"circuit-tracer=={CT_VERSION} --hash=sha256:{CT_SHA256}\n")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                 "--no-deps", "--only-binary=:all:", "--require-hashes", "-r", str(req), "-d", tmp],
                check=True,
            )  # fmt: skip
            shutil.copy(Path(tmp) / CT_WHEEL, wheel)
    if _sha256(wheel) != CT_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {_sha256(wheel)}, expected {CT_SHA256}")
    return wheel


def _download_npm(cache: Path, package: str, version: str, integrity: str) -> Path:
    tgz = cache / f"{package}-{version}.tgz"
    if not (tgz.exists() and _integrity(tgz.read_bytes()) == integrity):
        url = f"https://registry.npmjs.org/{package}/-/{package}-{version}.tgz"
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        if _integrity(data) != integrity:
            raise RuntimeError(f"{url}: integrity {_integrity(data)}, expected {integrity}")
        tgz.write_bytes(data)
    return tgz


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def stage(dest: Path) -> Path:
    """The staged viewer folder (index.html at its root), fetched and built once."""
    out = staged_dir(dest)
    stamp = out / ".staged"
    if stamp.exists() and stamp.read_text() == MANIFEST:
        return out
    cache = dest / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(cache)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=dest))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(ASSETS) and not name.endswith("/"):
                    target = tmp / name[len(ASSETS) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
        lib = tmp / "lib"
        lib.mkdir()
        for local, (package, version, integrity, member) in NPM.items():
            with tarfile.open(_download_npm(cache, package, version, integrity)) as tf:
                extracted = tf.extractfile(member)
                if extracted is None:
                    raise RuntimeError(f"{package}@{version}: no file {member}")
                (lib / local).write_bytes(extracted.read())
        (lib / "hotserver-client-ws.js").write_text(HOTSERVER_STUB)
        index = tmp / "index.html"
        html = index.read_text(encoding="utf-8")
        for remote, local in SCRIPTS.items():
            if html.count(remote) != 1:
                raise RuntimeError(f"circuit-tracer {CT_VERSION} index.html: expected one {remote!r}")
            html = html.replace(remote, local)
        if "://" in html:
            raise RuntimeError("index.html still names a remote address after the rewrite")
        index.write_text(html, encoding="utf-8")
        (tmp / ".staged").write_text(MANIFEST)
        shutil.rmtree(out, ignore_errors=True)
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / "build" / "viewer")
    print(stage(parser.parse_args().dest))


if __name__ == "__main__":
    main()
