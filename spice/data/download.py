"""Dataset downloads from pinned manifests (`data/manifests/<name>.json`), verified by sha256 and size.

pooch does the fetching logic (retries, temporary file, sha256 check, move into place); our
downloader adds resume: bytes go to `<file>.part` and an interrupted transfer continues from there
with an HTTP Range request. A checksum or size mismatch is an error and leaves nothing under the
final name. Manifests whose sha256/size are null (PILArNet on OSF publishes none) get them recorded
on first download ("pinned") and verified ever after.

A manifest with a `listing` block (PILArNet-M on the Hub) may leave a split without file entries:
the first download of that split asks the Hub's tree API for the folder at the pinned revision and
records every file (path, resolve URL, size, and sha256 = the Git LFS oid) in the manifest, which
later calls use without asking again.

Files go to `data/downloads/<dataset>/<path>` in the repository, or under env SPICE_DATA_DIR.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pooch
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIR = REPO_ROOT / "data" / "manifests"
CHUNK = 1 << 16  # small enough that a cut transfer keeps most of what arrived


class DownloadError(RuntimeError):
    """A download that cannot complete: unreachable host, bad status, checksum or size mismatch."""


def data_root() -> Path:
    return Path(os.environ.get("SPICE_DATA_DIR") or REPO_ROOT / "data" / "downloads")


def manifest_path(dataset) -> Path:
    """The manifest of a dataset name (from data/manifests) or an explicit path to a JSON file."""
    p = Path(dataset)
    if p.suffix == ".json" and p.exists():
        return p
    p = MANIFEST_DIR / f"{dataset}.json"
    if not p.exists():
        raise KeyError(f"unknown dataset {dataset!r}; known: {list_datasets()}")
    return p


def load_manifest(dataset) -> dict:
    with open(manifest_path(dataset)) as f:
        return json.load(f)


def list_datasets() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))


def _write_json_atomic(path: Path, data: dict):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class ResumableDownloader:
    """pooch downloader that streams into `part` (resuming it with a Range request) and, once the
    transfer is complete and its size right, moves it onto pooch's temporary output file."""

    def __init__(self, part: Path, size: int | None = None, progressbar: bool = True, timeout: float = 30):
        self.part, self.size, self.progressbar, self.timeout = Path(part), size, progressbar, timeout

    def __call__(self, url: str, output_file, pooch_obj=None, check_only: bool = False):
        have = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True) as r:
            if have and r.status_code == 416 and self.size == have:
                pass  # the part file is already complete
            else:
                r.raise_for_status()
                if r.status_code != 206:
                    have = 0  # server ignored the Range: start again
                total = have + int(r.headers["Content-Length"]) if "Content-Length" in r.headers else self.size
                bar = None
                if self.progressbar:
                    from tqdm import tqdm
                    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=self.part.name[:-5])
                try:
                    with open(self.part, "ab" if have else "wb") as f:
                        for chunk in r.iter_content(CHUNK):
                            f.write(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
                got = self.part.stat().st_size
                if total is not None and got < total:
                    raise requests.exceptions.ConnectionError(f"transfer ended at {got} of {total} bytes")
        got = self.part.stat().st_size
        if self.size is not None and got != self.size:
            self.part.unlink()
            raise ValueError(f"size mismatch for {url}: got {got} bytes, manifest says {self.size}")
        os.replace(self.part, output_file)


def fetch_file(url: str, dest: Path, sha256: str | None = None, size: int | None = None,
               retries: int = 3, progressbar: bool = True, timeout: float = 30, dataset: str = "") -> Path:
    """Download url to dest (resuming dest.part), verify sha256/size, return dest. Idempotent."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fetcher = pooch.create(path=dest.parent, base_url="", registry={dest.name: f"sha256:{sha256}" if sha256 else None},
                           urls={dest.name: url}, retry_if_failed=retries)
    if dest.exists() and sha256 is None and size is not None and dest.stat().st_size != size:
        dest.unlink()  # only a size is pinned and it is wrong: fetch again
    downloader = ResumableDownloader(dest.with_name(dest.name + ".part"), size, progressbar, timeout)
    what = f"dataset {dataset!r} file {dest.name} from {url}"
    try:
        return Path(fetcher.fetch(dest.name, downloader=downloader, progressbar=progressbar))
    except requests.exceptions.ConnectionError as exc:
        raise DownloadError(f"cannot complete {what}: host unreachable or transfer cut ({exc}); "
                            f"rerun to resume from {downloader.part.name}") from exc
    except requests.exceptions.RequestException as exc:
        raise DownloadError(f"cannot download {what}: {exc}") from exc
    except ValueError as exc:
        raise DownloadError(f"rejected {what}: {exc}; nothing was kept under {dest}") from exc


def unlisted_splits(manifest: dict) -> list[str]:
    """Splits of the manifest's `listing` that have no file entries yet (listed on first download)."""
    have = {f.get("split") for f in manifest["files"]}
    return [s for s in manifest.get("listing", {}).get("folders", {}) if s not in have]


def _get_json(url: str, what: str, timeout: float):
    """GET url and decode its JSON body; any failure is a DownloadError naming `what` and url."""
    try:
        r = requests.get(url, timeout=timeout)
        r.raise_for_status()
    except requests.exceptions.RequestException as exc:
        raise DownloadError(f"cannot list {what} from {url}: {exc}") from exc
    try:
        return json.loads(r.content), r.links.get("next", {}).get("url")
    except ValueError as exc:
        raise DownloadError(f"cannot list {what} from {url}: the answer is not JSON ({exc})") from exc


def list_split(manifest: dict, split: str, timeout: float = 30) -> list[dict]:
    """File entries of one split, from the tree API named by the manifest's `listing` at its
    revision (following `Link: rel=next` pages), sorted by path; sha256 is the LFS oid or null."""
    listing, revision = manifest["listing"], manifest["revision"]
    first = url = listing["api"].format(revision=revision, folder=listing["folders"][split])
    what = f"dataset {manifest['name']!r} split {split!r}"
    entries = []
    while url:
        page, url_next = _get_json(url, what, timeout)
        if not isinstance(page, list):
            raise DownloadError(f"cannot list {what} from {url}: expected a JSON list of entries")
        entries += page
        url = url_next
    files = []
    for e in entries:
        path = e.get("path", "")
        if e.get("type") != "file" or not path.endswith(listing.get("suffix", "")):
            continue
        lfs = e.get("lfs") or {}
        files.append({"split": split, "path": path,
                      "url": listing["resolve"].format(revision=revision, path=quote(path)),
                      "size": lfs.get("size", e.get("size")), "sha256": lfs.get("oid"), "n_events": None})
    if not files:
        raise DownloadError(f"cannot list {what}: no *{listing.get('suffix', '')} files at {first}")
    return sorted(files, key=lambda f: f["path"])


def pin_listing(manifest: dict, mpath: Path, split: str | None = None, timeout: float = 30) -> list[str]:
    """List the unlisted splits (all, or just `split`), add their files to the manifest and write it.
    Returns the splits listed."""
    todo = [s for s in unlisted_splits(manifest) if split is None or s == split]
    for s in todo:
        files = list_split(manifest, s, timeout)
        manifest["files"] += files
        _write_json_atomic(mpath, manifest)
        print(f"pinned the listing of {manifest['name']} split {s!r} at revision {manifest['revision']}: "
              f"{len(files)} files (recorded in {mpath})")
    return todo


def selected_files(manifest: dict, split: str | None = None, max_files: int | None = None) -> list[dict]:
    files = [f for f in manifest["files"] if split is None or f.get("split") == split]
    if split is not None and not files:
        splits = sorted({f.get("split") for f in manifest["files"]} | set(unlisted_splits(manifest)))
        raise KeyError(f"dataset {manifest['name']!r} has no split {split!r}; splits: {splits}")
    return files[:max_files] if max_files is not None else files


def download(dataset, split: str | None = None, max_files: int | None = None, root=None,
             retries: int = 3, progressbar: bool = True, timeout: float = 30) -> list[Path]:
    """Fetch (and verify) the files of a dataset manifest; pin sha256/size recorded as null, and the
    file list of splits that a `listing` manifest has not listed yet."""
    mpath = manifest_path(dataset)
    manifest = load_manifest(mpath)
    pin_listing(manifest, mpath, split, timeout)
    root = Path(root) if root is not None else data_root()
    out = []
    for entry in selected_files(manifest, split, max_files):
        if not entry.get("url"):
            raise DownloadError(f"dataset {manifest['name']!r} file {entry['path']}: no URL in the manifest "
                                f"({entry.get('note') or manifest.get('note', '')})")
        dest = root / manifest["name"] / entry["path"]
        path = fetch_file(entry["url"], dest, entry.get("sha256"), entry.get("size"), retries, progressbar,
                          timeout, manifest["name"])
        pinned = []
        if entry.get("sha256") is None or entry.get("size") is None:
            entry["sha256"], entry["size"] = pooch.file_hash(str(path), alg="sha256"), path.stat().st_size
            pinned.append(f"sha256 {entry['sha256']}, {entry['size']} bytes")
        if entry.get("n_events") is None:
            from spice.data.dataset import open_reader  # the event count, from the file's metadata
            entry["n_events"] = len(open_reader(path))
            pinned.append(f"{entry['n_events']} events")
        if pinned:
            _write_json_atomic(mpath, manifest)
            print(f"pinned {manifest['name']}/{entry['path']}: {', '.join(pinned)} (recorded in {mpath})")
        out.append(path)
    return out


def verify(dataset=None, root=None) -> list[dict]:
    """Check downloaded files against their manifests: one dict per file with status
    ok / missing / mismatch / unpinned (no sha256 recorded yet). Splits not listed yet have no rows."""
    root = Path(root) if root is not None else data_root()
    names = [dataset] if dataset is not None else list_datasets()
    rows = []
    for name in names:
        manifest = load_manifest(name)
        for entry in manifest["files"]:
            path = root / manifest["name"] / entry["path"]
            row = {"dataset": manifest["name"], "path": entry["path"], "status": "missing", "detail": ""}
            if path.exists():
                sha, size = pooch.file_hash(str(path), alg="sha256"), path.stat().st_size
                if entry.get("sha256") is None:
                    row["status"], row["detail"] = "unpinned", f"sha256 {sha}"
                elif sha != entry["sha256"] or (entry.get("size") is not None and size != entry["size"]):
                    row["status"], row["detail"] = "mismatch", f"sha256 {sha}, {size} bytes"
                else:
                    row["status"] = "ok"
            rows.append(row)
    return rows
