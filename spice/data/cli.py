"""`spice data {download,verify,list,synth}`: fetch, check, list or synthesise datasets."""
from __future__ import annotations

import argparse
import sys

from spice.data import download as dl


def _list(_args) -> int:
    for name in dl.list_datasets():
        m = dl.load_manifest(name)
        counts = [f.get("n_events") for f in m["files"]]
        unlisted = dl.unlisted_splits(m)  # their files are listed on first download
        n = str(sum(counts)) if all(c is not None for c in counts) and not unlisted else "unknown"
        later = f" [{'/'.join(unlisted)}: listed on first download]" if unlisted else ""
        print(f"{name:<18} {len(m['files']):>3} files  {n:>9} events  {m.get('description', '')}{later}")
    return 0


def _known(call, dataset):
    """call(), with an unknown dataset or split (KeyError) turned into the bad-input error (ValueError)
    that the `spice` dispatcher reports in one line."""
    try:
        return call()
    except KeyError as exc:
        raise ValueError(f"{dataset}: {exc.args[0] if exc.args else exc}") from None


def _download(args) -> int:
    paths = _known(lambda: dl.download(args.dataset, args.split, args.max_files, retries=args.retries), args.dataset)
    for p in paths:
        print(p)
    return 0


def _verify(args) -> int:
    rows = _known(lambda: dl.verify(args.dataset), args.dataset)
    for r in rows:
        print(f"{r['status']:<9} {r['dataset']}/{r['path']} {r['detail']}")
    return 1 if any(r["status"] == "mismatch" for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["synth"]:
        from spice.data import synthetic  # written by the synthetic-events module; has its own argparse
        return int(synthetic.synth_main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="spice data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="download and verify a dataset from its manifest")
    p.add_argument("--dataset", required=True, help="manifest name (see `spice data list`) or path to a .json")
    p.add_argument("--split", default=None, help="train, val or test (default: all)")
    p.add_argument("--max-files", type=int, default=None, help="download at most K files")
    p.add_argument("--retries", type=int, default=3)
    p.set_defaults(run=_download)
    p = sub.add_parser("verify", help="check downloaded files against the manifests' sha256 and size")
    p.add_argument("--dataset", default=None)
    p.set_defaults(run=_verify)
    sub.add_parser("list", help="list the known datasets").set_defaults(run=_list)
    sub.add_parser("synth", help="write synthetic events (see `spice data synth --help`)")
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
