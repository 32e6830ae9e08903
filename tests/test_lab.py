"""`make lab`: JupyterLab starts on the notebooks with this environment's kernel, seen over HTTP."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("jupyterlab", reason="JupyterLab not installed: pip install -e '.[lab]' (part of .[dev])")
if shutil.which("make") is None:
    pytest.skip("make not found", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def test_make_lab_lists_the_notebooks(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    args = f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 " \
           f"--IdentityProvider.token={token}"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    proc = subprocess.Popen(["make", "-s", "lab", f"PY={sys.executable}", "ENV_READY=env-active", f"LAB_ARGS={args}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, listing = time.monotonic() + 180, None
        while listing is None:
            assert proc.poll() is None, f"make lab exited with {proc.returncode}: {proc.stdout.read()}"
            assert time.monotonic() < deadline, "JupyterLab did not answer within 180 s"
            try:
                listing = json.loads(get(f"{base}/api/contents/?token={token}")[1])
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        names = sorted(item["name"] for item in listing["content"] if item["type"] == "notebook")
        assert names == sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")) and names
        status, page = get(f"{base}/lab?token={token}")
        assert status == 200 and "JupyterLab" in page
        specs = json.loads(get(f"{base}/api/kernelspecs?token={token}")[1])
        default = specs["kernelspecs"][specs["default"]]["spec"]
        # the server's own Python (jupyter_client puts sys.executable for a bare "python"): this environment's
        assert default["language"] == "python" and default["argv"][0] in ("python", "python3", sys.executable)
        with pytest.raises(urllib.error.HTTPError):  # the token is required
            get(f"{base}/api/contents/")
    finally:
        if proc.poll() is None:  # make and JupyterLab: the process group this test started
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
