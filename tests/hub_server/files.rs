//! The read side: repo info (sha, siblings, private), the tree listing, paths-info and
//! `resolve` (file bytes with the headers `hf_hub_download` reads).

use serde_json::{json, Value};

use super::routes::{entry_not_found, form_pairs, readable, revision_not_found, Req, Resp, Who};
use super::state::{folders, lfs_pointer, sha1_hex, Commit, Entry, State};

/// The commit at `rev` of a repo `who` may read (`None`: a branch without commits).
fn at<'a>(st: &'a State, who: Who, repo: &str, rev: &str) -> Result<Option<&'a Commit>, Resp> {
    readable(st, who, repo)?.lookup(rev).map_err(|()| revision_not_found(rev))
}

/// `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`.
pub fn info(st: &State, who: Who, repo: &str, rev: &str) -> Resp {
    let commit = match at(st, who, repo, rev) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let private = st.repos.get(repo).is_some_and(|r| r.private);
    let siblings: Vec<Value> =
        commit.map(|c| c.tree.iter().map(|(path, e)| sibling(path, e)).collect()).unwrap_or_default();
    let author = repo.split('/').next().unwrap_or("");
    Resp::json(
        200,
        json!({
            "_id": &sha1_hex(repo.as_bytes())[..24], "id": repo, "modelId": repo, "author": author,
            "sha": commit.map(|c| c.oid.clone()), "private": private, "disabled": false,
            "gated": false, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        }),
    )
}

fn sibling(path: &str, e: &Entry) -> Value {
    let mut s = json!({"rfilename": path, "size": e.size(), "blobId": e.blob_id()});
    if let Entry::Lfs { oid, size } = e {
        s["lfs"] = json!({"sha256": oid, "size": size, "pointerSize": lfs_pointer(oid, *size).len()});
    }
    s
}

/// A tree entry as `/tree` and `/paths-info` list it.
fn file_json(path: &str, e: &Entry) -> Value {
    let mut f = json!({"type": "file", "oid": e.blob_id(), "size": e.size(), "path": path});
    if let Entry::Lfs { oid, size } = e {
        f["lfs"] = json!({"oid": oid, "size": size, "pointerSize": lfs_pointer(oid, *size).len()});
    }
    f
}

fn folder_json(path: &str) -> Value {
    json!({"type": "directory", "oid": sha1_hex(path.as_bytes()), "size": 0, "path": path})
}

/// `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...`: the entries under `path`
/// (direct children, or all with `recursive`), folders first; one page (no `Link` header).
pub fn tree(st: &State, r: &Req, who: Who, repo: &str, rev: &str, path: &str) -> Resp {
    let commit = match at(st, who, repo, rev) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let recursive = r.query_param("recursive").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"));
    let empty = Default::default();
    let tree = commit.map(|c| &c.tree).unwrap_or(&empty);
    let dirs = folders(tree);
    let path = path.trim_matches('/');
    if !path.is_empty() && !dirs.contains(path) {
        return entry_not_found(path);
    }
    let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
    let wanted = |p: &str| p.starts_with(&prefix) && (recursive || !p[prefix.len()..].contains('/'));
    let mut out: Vec<Value> = dirs.iter().filter(|d| wanted(d)).map(|d| folder_json(d)).collect();
    out.extend(tree.iter().filter(|(p, _)| wanted(p)).map(|(p, e)| file_json(p, e)));
    Resp::json(200, Value::Array(out))
}

/// `POST /api/models/{repo}/paths-info/{rev}`, form (`paths=a&paths=b`) or JSON
/// (`{"paths": [...]}`) body; paths that do not exist are left out, as the Hub does.
pub fn paths_info(st: &State, r: &Req, who: Who, repo: &str, rev: &str) -> Resp {
    let commit = match at(st, who, repo, rev) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let is_json = r.header("content-type").is_some_and(|c| c.contains("json"));
    let paths: Vec<String> = if is_json {
        let body = r.json().unwrap_or(json!({}));
        let list = body["paths"].as_array().cloned().unwrap_or_default();
        list.iter().filter_map(|p| p.as_str().map(str::to_string)).collect()
    } else {
        let body = String::from_utf8_lossy(&r.body);
        form_pairs(&body)
            .into_iter()
            .filter(|(k, _)| k == "paths" || k == "paths[]")
            .map(|(_, v)| v)
            .collect()
    };
    let empty = Default::default();
    let tree = commit.map(|c| &c.tree).unwrap_or(&empty);
    let dirs = folders(tree);
    let mut out = vec![];
    for p in &paths {
        let p = p.trim_matches('/');
        if let Some(e) = tree.get(p) {
            out.push(file_json(p, e));
        } else if dirs.contains(p) {
            out.push(folder_json(p));
        }
    }
    Resp::json(200, Value::Array(out))
}

/// `GET`/`HEAD /{repo}/resolve/{rev}/{path}`: the bytes (LFS files from the object store,
/// served directly rather than redirected to a CDN) with `ETag` (the git blob id, or the
/// sha256 for LFS files), `X-Repo-Commit`, and for LFS files `X-Linked-Etag`/`X-Linked-Size`.
pub fn resolve(st: &State, who: Who, repo: &str, rev: &str, path: &str) -> Resp {
    let commit = match at(st, who, repo, rev) {
        Ok(Some(c)) => c,
        Ok(None) => return entry_not_found(path),
        Err(e) => return e,
    };
    let Some(entry) = commit.tree.get(path) else {
        return entry_not_found(path).header("X-Repo-Commit", &commit.oid);
    };
    let body = st.content(entry);
    let mut resp = Resp { status: 200, headers: vec![], body }
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", &entry.size().to_string())
        .header("X-Repo-Commit", &commit.oid);
    resp = match entry {
        Entry::Regular(_) => resp.header("ETag", &format!("\"{}\"", entry.blob_id())),
        Entry::Lfs { oid, size } => resp
            .header("ETag", &format!("\"{oid}\""))
            .header("X-Linked-Etag", &format!("\"{oid}\""))
            .header("X-Linked-Size", &size.to_string()),
    };
    resp
}
