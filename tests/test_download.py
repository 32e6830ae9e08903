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
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
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
