"""Downloads against a real HTTP server on 127.0.0.1: good, corrupted, truncated, resumed, unreachable."""
import hashlib
import http.server
import json
import socket
import threading

import pytest

from spice.data import download as dl
from spice.data.cli import main as cli_main

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files` {name: (bytes, mode)}; modes: good, truncate (always cut), interrupt_once.
    Honours `Range: bytes=N-` with 206 responses. Logs (path, range header) into `log`."""

    files: dict = {}
    log: list = []

    def do_GET(self):
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        self.log.append((name, rng))
        if name not in self.files:
            self.send_error(404)
            return
        data, mode = self.files[name]
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = mode == "truncate" or (mode == "interrupt_once" and sum(n == name for n, _ in self.log) == 1)
        self.wfile.write(body[: len(body) // 2] if cut else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.files, Handler.log = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Handler
    httpd.shutdown()
    httpd.server_close()


def manifest(tmp_path, base, name, sha256=None, size=None):
    m = {"name": "toy", "files": [{"split": "train", "path": f"sub/{name}", "url": f"{base}/{name}",
                                   "sha256": sha256, "size": size, "n_events": 1}]}
    p = tmp_path / "toy.json"
    p.write_text(json.dumps(m))
    return p


def sha(b):
    return hashlib.sha256(b).hexdigest()


def test_good_file_verified(tmp_path, server):
    base, h = server
    h.files["a.bin"] = (PAYLOAD, "good")
    m = manifest(tmp_path, base, "a.bin", sha(PAYLOAD), len(PAYLOAD))
    [path] = dl.download(m, root=tmp_path / "dl", progressbar=False)
    assert path == tmp_path / "dl/toy/sub/a.bin" and path.read_bytes() == PAYLOAD
    assert not list(path.parent.glob("*.part"))
    dl.download(m, root=tmp_path / "dl", progressbar=False)  # already there: no second request
    assert len(h.log) == 1


def test_first_download_pins_checksum(tmp_path, server, capsys):
    base, h = server
    h.files["a.bin"] = (PAYLOAD, "good")
    m = manifest(tmp_path, base, "a.bin")
    dl.download(m, root=tmp_path / "dl", progressbar=False)
    entry = json.loads(m.read_text())["files"][0]
    assert entry["sha256"] == sha(PAYLOAD) and entry["size"] == len(PAYLOAD)
    assert "pinned toy/sub/a.bin" in capsys.readouterr().out
    # pinned from now on: a changed file on disk is detected by verify and replaced by download
    (tmp_path / "dl/toy/sub/a.bin").write_bytes(b"tampered")
    statuses = {r["status"] for r in dl.verify(m, root=tmp_path / "dl")}
    assert statuses == {"mismatch"}
    dl.download(m, root=tmp_path / "dl", progressbar=False)
    assert (tmp_path / "dl/toy/sub/a.bin").read_bytes() == PAYLOAD


def test_first_download_pins_event_count(tmp_path, server):
    from spice.data import write_pilarnet_m
    from spice.data.synthetic import generate
    h5 = write_pilarnet_m(generate(3, spatial_size=64, seed=1), tmp_path / "events.h5")
    base, h = server
    h.files["events.h5"] = (h5.read_bytes(), "good")
    m = manifest(tmp_path, base, "events.h5")
    data = json.loads(m.read_text())
    data["files"][0]["n_events"] = None
    m.write_text(json.dumps(data))
    dl.download(m, root=tmp_path / "dl", progressbar=False)
    assert json.loads(m.read_text())["files"][0]["n_events"] == 3


def test_corrupted_file_rejected(tmp_path, server):
    base, h = server
    h.files["a.bin"] = (PAYLOAD[:-1] + b"X", "good")
    m = manifest(tmp_path, base, "a.bin", sha(PAYLOAD))
    with pytest.raises(dl.DownloadError, match="rejected dataset 'toy' file a.bin"):
        dl.download(m, root=tmp_path / "dl", retries=0, progressbar=False)
    assert list((tmp_path / "dl/toy/sub").iterdir()) == []  # nothing under the final name, no part


def test_size_mismatch_rejected(tmp_path, server):
    base, h = server
    h.files["a.bin"] = (PAYLOAD, "good")
    m = manifest(tmp_path, base, "a.bin", None, len(PAYLOAD) + 1)
    with pytest.raises(dl.DownloadError, match="size mismatch"):
        dl.download(m, root=tmp_path / "dl", retries=0, progressbar=False)
    assert list((tmp_path / "dl/toy/sub").iterdir()) == []


def test_truncated_transfer_is_an_error(tmp_path, server):
    base, h = server
    h.files["a.bin"] = (PAYLOAD, "truncate")
    m = manifest(tmp_path, base, "a.bin", sha(PAYLOAD))
    with pytest.raises(dl.DownloadError, match="a.bin"):
        dl.download(m, root=tmp_path / "dl", retries=0, progressbar=False)
    assert not (tmp_path / "dl/toy/sub/a.bin").exists()
    part = tmp_path / "dl/toy/sub/a.bin.part"
    kept = part.read_bytes()  # what arrived, less at most the chunk being read when the link broke
    assert 0 < len(kept) <= len(PAYLOAD) // 2 and PAYLOAD.startswith(kept)


def test_interrupted_then_resumed(tmp_path, server):
    base, h = server
    h.files["a.bin"] = (PAYLOAD, "interrupt_once")
    m = manifest(tmp_path, base, "a.bin", sha(PAYLOAD), len(PAYLOAD))
    with pytest.raises(dl.DownloadError):
        dl.download(m, root=tmp_path / "dl", retries=0, progressbar=False)
    kept = (tmp_path / "dl/toy/sub/a.bin.part").stat().st_size
    assert kept > 0
    [path] = dl.download(m, root=tmp_path / "dl", retries=0, progressbar=False)
    assert path.read_bytes() == PAYLOAD
    assert h.log == [("a.bin", None), ("a.bin", f"bytes={kept}-")]  # the second request asked only the rest
    assert not (tmp_path / "dl/toy/sub/a.bin.part").exists()


def test_retry_resumes_within_one_call(tmp_path, server):
    base, h = server
    h.files["a.bin"] = (PAYLOAD, "interrupt_once")
    m = manifest(tmp_path, base, "a.bin", sha(PAYLOAD))
    [path] = dl.download(m, root=tmp_path / "dl", retries=1, progressbar=False)
    assert path.read_bytes() == PAYLOAD and h.log[1][1].startswith("bytes=") and h.log[1][1] != "bytes=0-"


def test_unreachable_host_names_dataset_and_url(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    m = manifest(tmp_path, f"http://127.0.0.1:{port}", "a.bin")
    with pytest.raises(dl.DownloadError, match=f"dataset 'toy'.*http://127.0.0.1:{port}/a.bin"):
        dl.download(m, root=tmp_path / "dl", retries=0, progressbar=False, timeout=5)


def test_manifests_are_complete():
    assert {"pilarnet_512px", "pilarnet_m_v2", "pilarnet_m_mini"} <= set(dl.list_datasets())
    osf = dl.load_manifest("pilarnet_512px")
    assert [f["path"] for f in osf["files"]] == [f"dlprod_512px_{i:02d}.root" for i in range(10)]
    assert osf["files"][0]["url"] == "https://osf.io/hb437/download"
    mini = dl.load_manifest("pilarnet_m_mini")
    assert all(f"/resolve/{mini['revision']}/" in f["url"] and len(f["sha256"]) == 64 for f in mini["files"])
    for name in dl.list_datasets():
        for f in dl.load_manifest(name)["files"]:
            assert {"split", "path", "url", "size", "sha256", "n_events"} <= set(f)


def test_cli_list_and_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPICE_DATA_DIR", str(tmp_path))
    assert cli_main(["list"]) == 0
    assert "pilarnet_m_mini" in capsys.readouterr().out
    assert cli_main(["verify", "--dataset", "pilarnet_m_mini"]) == 0
    assert capsys.readouterr().out.count("missing") == 3


# --- manifests with a `listing`: the file list comes from a tree API at the pinned revision ---

REV = "abc123"


@pytest.fixture(scope="module")
def h5_bytes(tmp_path_factory):
    """Three small PILArNet-M files (a, b, c), 1, 2 and 3 events."""
    from spice.data import write_pilarnet_m
    from spice.data.synthetic import generate
    d = tmp_path_factory.mktemp("h5")
    return [write_pilarnet_m(generate(n, spatial_size=32, seed=n), d / f"{n}.h5").read_bytes() for n in (1, 2, 3)]


def listed_manifest(tmp_path, base, h, h5_bytes):
    """A manifest with no files and a listing served by `h`: tr/a.h5 (right LFS oid), tr/b.h5 (wrong
    oid), tr/c.h5 (no LFS block), plus a folder and a non-.h5 file that must be skipped."""
    a, b, c = h5_bytes
    tree = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": "tr/sub"},
            {"type": "file", "oid": "1" * 40, "size": len(b), "path": "tr/b.h5",
             "lfs": {"oid": sha(b"not b"), "size": len(b), "pointerSize": 134}},
            {"type": "file", "oid": "2" * 40, "size": len(a), "path": "tr/a.h5",
             "lfs": {"oid": sha(a), "size": len(a), "pointerSize": 134}},
            {"type": "file", "oid": "3" * 40, "size": len(c), "path": "tr/c.h5"},
            {"type": "file", "oid": "4" * 40, "size": 5, "path": "tr/README.md"}]
    h.files[f"api/tree/{REV}/tr"] = (json.dumps(tree).encode(), "good")
    for name, data in zip("abc", h5_bytes):
        h.files[f"resolve/{REV}/tr/{name}.h5"] = (data, "good")
    m = {"name": "toy", "revision": REV, "files": [],
         "listing": {"api": base + "/api/tree/{revision}/{folder}", "resolve": base + "/resolve/{revision}/{path}",
                     "folders": {"train": "tr"}, "suffix": ".h5"}}
    p = tmp_path / "toy.json"
    p.write_text(json.dumps(m))
    return p


def test_listing_pins_entries_then_downloads(tmp_path, server, h5_bytes, capsys):
    base, h = server
    a, b, c = h5_bytes
    m = listed_manifest(tmp_path, base, h, h5_bytes)
    with pytest.raises(dl.DownloadError, match="rejected dataset 'toy' file b.h5"):
        dl.download(m, split="train", root=tmp_path / "dl", retries=0, progressbar=False)
    assert f"pinned the listing of toy split 'train' at revision {REV}: 3 files" in capsys.readouterr().out
    files = json.loads(m.read_text())["files"]
    assert [f["path"] for f in files] == ["tr/a.h5", "tr/b.h5", "tr/c.h5"]
    assert files[0] == {"split": "train", "path": "tr/a.h5", "url": f"{base}/resolve/{REV}/tr/a.h5",
                        "size": len(a), "sha256": sha(a), "n_events": 1}  # n_events pinned by the download
    assert files[1]["sha256"] == sha(b"not b") and files[2]["sha256"] is None and files[2]["size"] == len(c)
    out = tmp_path / "dl/toy/tr"
    assert (out / "a.h5").read_bytes() == a and sorted(p.name for p in out.iterdir()) == ["a.h5"]
    assert [n for n, _ in h.log] == [f"api/tree/{REV}/tr", f"resolve/{REV}/tr/a.h5", f"resolve/{REV}/tr/b.h5"]
    rows = {r["path"]: r["status"] for r in dl.verify(m, root=tmp_path / "dl")}
    assert rows == {"tr/a.h5": "ok", "tr/b.h5": "missing", "tr/c.h5": "missing"}
    h.log.clear()
    [path] = dl.download(m, split="train", max_files=1, root=tmp_path / "dl", progressbar=False)
    assert path == out / "a.h5" and h.log == []  # pinned entries, file in place: no request at all


def test_listing_then_max_files(tmp_path, server, h5_bytes):
    base, h = server
    m = listed_manifest(tmp_path, base, h, h5_bytes)
    paths = dl.download(m, max_files=1, root=tmp_path / "dl", progressbar=False)  # split None: every folder
    assert paths == [tmp_path / "dl/toy/tr/a.h5"] and len(json.loads(m.read_text())["files"]) == 3
    assert [n for n, _ in h.log] == [f"api/tree/{REV}/tr", f"resolve/{REV}/tr/a.h5"]


def test_listing_unreachable_or_not_json(tmp_path, server, h5_bytes):
    base, h = server
    m = listed_manifest(tmp_path, base, h, h5_bytes)
    h.files[f"api/tree/{REV}/tr"] = (b"<html>rate limited</html>", "good")
    with pytest.raises(dl.DownloadError, match=f"dataset 'toy' split 'train' from {base}/api/tree/{REV}/tr.*not JSON"):
        dl.download(m, split="train", root=tmp_path / "dl", progressbar=False)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    data = json.loads(m.read_text())
    data["listing"]["api"] = f"http://127.0.0.1:{port}/api/tree/{{revision}}/{{folder}}"
    m.write_text(json.dumps(data))
    url = f"http://127.0.0.1:{port}/api/tree/{REV}/tr"
    with pytest.raises(dl.DownloadError, match=f"dataset 'toy' split 'train' from {url}"):
        dl.download(m, split="train", root=tmp_path / "dl", progressbar=False, timeout=5)
    assert json.loads(m.read_text())["files"] == []  # nothing pinned by a failed listing
    with pytest.raises(KeyError, match="splits: \\['train'\\]"):
        dl.download(m, split="val", root=tmp_path / "dl", progressbar=False)


def test_pilarnet_m_v2_is_listed_at_its_revision(tmp_path, monkeypatch, capsys):
    m = dl.load_manifest("pilarnet_m_v2")
    assert len(m["revision"]) == 40 and all(f.get("url") for f in m["files"])
    assert "{revision}" in m["listing"]["api"] and "/resolve/{revision}/{path}" in m["listing"]["resolve"]
    assert set(m["listing"]["folders"]) == {"train", "val", "test"} and m["listing"]["suffix"] == ".h5"
    monkeypatch.setenv("SPICE_DATA_DIR", str(tmp_path))
    assert cli_main(["list"]) == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pilarnet_m_v2")]
    if dl.unlisted_splits(m):
        assert "listed on first download" in line
    assert cli_main(["verify", "--dataset", "pilarnet_m_v2"]) == 0
