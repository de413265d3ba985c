"""The real huggingface_hub client against a Hub endpoint (HF_ENDPOINT, HF_TOKEN from the env).

    hub_client.py upload DIR REPO [--private] [--message M] [--revision R]
    hub_client.py download REPO OUT [--revision R]
    hub_client.py branch REPO BRANCH [--revision FROM]
    hub_client.py inspect REPO PATH... [--revision R]   (whoami, repo_info, tree, paths-info,
                                                         and each PATH's file metadata)

On success prints one JSON line; on a client error prints `error: <ExceptionType>: <message>`
on stderr and exits 1 (the tests read the exception the client derived from the server's reply).
"""

import argparse
import json
import sys

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, snapshot_download


def upload(args):
    api = HfApi()
    api.create_repo(args.repo, exist_ok=True, private=args.private)
    info = api.upload_folder(
        folder_path=args.dir,
        repo_id=args.repo,
        commit_message=args.message,
        revision=args.revision,
    )
    return {"oid": info.oid, "commit_url": info.commit_url}


def download(args):
    path = snapshot_download(args.repo, revision=args.revision, local_dir=args.out)
    return {"path": path}


def branch(args):
    HfApi().create_branch(args.repo, branch=args.branch, revision=args.revision)
    return {"branch": args.branch}


def inspect(args):
    api = HfApi()
    info = api.model_info(args.repo, revision=args.revision, files_metadata=True)
    tree = api.list_repo_tree(args.repo, revision=args.revision)
    nested = api.list_repo_tree(args.repo, path_in_repo=args.paths[0].split("/", 1)[0], recursive=True,
                                revision=args.revision)
    entries = api.get_paths_info(args.repo, args.paths, revision=args.revision)

    def entry(e):
        lfs = getattr(e, "lfs", None)
        return {"path": e.path, "kind": type(e).__name__, "size": getattr(e, "size", None),
                "blob_id": getattr(e, "blob_id", None), "lfs_sha256": lfs.sha256 if lfs else None}

    meta = {}
    for path in args.paths:
        m = get_hf_file_metadata(hf_hub_url(args.repo, path, revision=args.revision))
        meta[path] = {"commit_hash": m.commit_hash, "etag": m.etag, "size": m.size}
    return {
        "whoami": api.whoami()["name"],
        "sha": info.sha,
        "private": info.private,
        "siblings": {s.rfilename: {"size": s.size, "blob_id": s.blob_id,
                                   "lfs_sha256": s.lfs.sha256 if s.lfs else None} for s in info.siblings},
        "tree": [entry(e) for e in tree],
        "nested": [entry(e) for e in nested],
        "paths_info": [entry(e) for e in entries],
        "meta": meta,
    }


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload")
    up.add_argument("dir")
    up.add_argument("repo")
    up.add_argument("--private", action="store_true")
    up.add_argument("--message", default=None)
    up.add_argument("--revision", default=None)
    down = sub.add_parser("download")
    down.add_argument("repo")
    down.add_argument("out")
    down.add_argument("--revision", default=None)
    br = sub.add_parser("branch")
    br.add_argument("repo")
    br.add_argument("branch")
    br.add_argument("--revision", default=None)
    ins = sub.add_parser("inspect")
    ins.add_argument("repo")
    ins.add_argument("paths", nargs="+")
    ins.add_argument("--revision", default=None)
    args = p.parse_args()
    run = {"upload": upload, "download": download, "branch": branch, "inspect": inspect}[args.cmd]
    try:
        result = run(args)
    except Exception as e:  # the tests assert on the exception the client raised
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
