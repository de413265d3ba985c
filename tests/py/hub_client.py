"""The real huggingface_hub client against a Hub endpoint (HF_ENDPOINT, HF_TOKEN from the env).

    hub_client.py upload DIR REPO [--private] [--message M] [--revision R]
    hub_client.py download REPO OUT [--revision R]
    hub_client.py branch REPO BRANCH [--revision FROM]

On success prints one JSON line; on a client error prints `error: <ExceptionType>: <message>`
on stderr and exits 1 (the tests read the exception the client derived from the server's reply).
"""

import argparse
import json
import sys

from huggingface_hub import HfApi, snapshot_download


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
    args = p.parse_args()
    run = {"upload": upload, "download": download, "branch": branch}[args.cmd]
    try:
        result = run(args)
    except Exception as e:  # the tests assert on the exception the client raised
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
