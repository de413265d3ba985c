//! The write side of the Hub's API: whoami, repo create, validate-yaml, preupload, the NDJSON
//! commit and branch creation.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Value};

use super::routes::{entry_not_found, revision_not_found, writable, Req, Resp, Who};
use super::state::{Commit, Entry, Repo, State};

/// The namespaces the write token may create repos in.
const NAMESPACES: &[&str] = &["user", "org"];

pub fn whoami(who: Who) -> Resp {
    let role = match who {
        Who::Anon => return Resp::error(401, "Invalid username or password."),
        Who::Read => "read",
        Who::Write => "write",
    };
    Resp::json(
        200,
        json!({
            "type": "user", "id": "0000000000000000000000aa", "name": "user", "fullname": "Test User",
            "email": null, "emailVerified": true, "isPro": false, "canPay": false,
            "orgs": [{"type": "org", "name": "org", "fullname": "Test Org", "roleInOrg": role}],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
        }),
    )
}

pub fn create_repo(st: &mut State, r: &Req, who: Who) -> Resp {
    let body = match r.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return Resp::error(400, "\"name\" is required");
    };
    let ns = body.get("organization").and_then(Value::as_str).unwrap_or("user");
    match who {
        Who::Anon => return Resp::error(401, "Invalid username or password."),
        Who::Write if NAMESPACES.contains(&ns) => {}
        _ => {
            let msg = format!("You don't have the rights to create a model under the namespace \"{ns}\"");
            return Resp::error(403, &msg);
        }
    }
    if let Some(t) = body.get("type").and_then(Value::as_str) {
        if t != "model" {
            return Resp::error(400, &format!("the test Hub serves model repos only, not {t}"));
        }
    }
    if let Err(msg) = validate_name(name) {
        return Resp::error(400, &msg);
    }
    let repo = format!("{ns}/{name}");
    let url = format!("{}/{repo}", st.endpoint);
    if st.repos.contains_key(&repo) {
        return Resp::json(409, json!({"error": "You already created this model repo", "url": url}))
            .header("X-Error-Message", "You already created this model repo");
    }
    let private = match body.get("visibility").and_then(Value::as_str) {
        Some(v) => v == "private",
        None => body.get("private").and_then(Value::as_bool).unwrap_or(false),
    };
    st.repos.insert(repo.clone(), Repo::new(private));
    Resp::json(200, json!({"url": url, "name": repo, "id": repo}))
}

/// The Hub's repo name rule (as `huggingface_hub.utils.validate_repo_id` checks it).
fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let bad_ends = name.starts_with(['-', '.']) || name.ends_with(['-', '.']);
    if name.is_empty()
        || name.len() > 96
        || !ok_chars
        || bad_ends
        || name.contains("--")
        || name.contains("..")
    {
        return Err(format!("Invalid repo name: {name:?}"));
    }
    Ok(())
}

/// Checks README.md front matter: a `---` block must be closed and its top-level lines must be
/// `key: value` (the Hub parses the YAML; this catches what a broken card generator writes).
pub fn validate_yaml(r: &Req) -> Resp {
    let body = match r.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let content = body.get("content").and_then(Value::as_str).unwrap_or("");
    let mut lines = content.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        let warn = json!([{"message": "empty or missing yaml metadata in repo card"}]);
        return Resp::json(200, json!({"errors": [], "warnings": warn}));
    }
    let mut closed = false;
    let mut errors = vec![];
    for (i, line) in lines.enumerate() {
        if line.trim_end() == "---" {
            closed = true;
            break;
        }
        let top = !line.starts_with([' ', '\t', '-', '#']) && !line.trim().is_empty();
        if top && !line.contains(':') {
            errors.push(json!({"message": format!("line {}: expected `key: value`, got {line:?}", i + 2)}));
        }
    }
    if !closed {
        errors.push(json!({"message": "the YAML front matter is not closed by a `---` line"}));
    }
    if errors.is_empty() {
        return Resp::json(200, json!({"errors": [], "warnings": []}));
    }
    Resp::json(400, json!({"errors": errors, "warnings": []}))
}

/// Answers each file's upload mode, and for files already at `rev` the oid the client compares
/// its local file with (so unchanged files are left out of the commit).
pub fn preupload(st: &mut State, r: &Req, who: Who, repo: &str, rev: &str) -> Resp {
    let head = match writable(st, who, repo).map(|repo| repo.lookup(rev)) {
        Err(e) => return e,
        Ok(Err(())) => return revision_not_found(rev),
        Ok(Ok(head)) => head,
    };
    let body = match r.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let Some(files) = body.get("files").and_then(Value::as_array) else {
        return Resp::error(400, "\"files\" must be a list");
    };
    let mut out = vec![];
    for f in files {
        let (Some(path), Some(size)) =
            (f.get("path").and_then(Value::as_str), f.get("size").and_then(Value::as_u64))
        else {
            return Resp::error(400, "each file needs \"path\" and \"size\"");
        };
        let mut info = json!({"path": path, "uploadMode": st.upload_mode(path, size), "shouldIgnore": false});
        if let Some(entry) = head.and_then(|c| c.tree.get(path)) {
            info["oid"] = json!(entry.preupload_oid());
        }
        out.push(info);
    }
    Resp::json(200, json!({"files": out, "commitOid": head.map(|c| c.oid.clone())}))
}

/// The NDJSON commit: a header line, then `file`, `lfsFile`, `deletedFile`, `deletedFolder`.
pub fn commit(st: &mut State, r: &Req, who: Who, repo_id: &str, rev: &str) -> Resp {
    let head = match writable(st, who, repo_id) {
        Err(e) => return e,
        Ok(repo) if !repo.branches.contains_key(rev) => return revision_not_found(rev),
        Ok(repo) => repo.lookup(rev).ok().flatten().cloned(),
    };
    if r.query_param("create_pr").is_some_and(|v| v == "1") {
        return Resp::error(400, "the test Hub does not support pull requests (create_pr)");
    }
    let lines: Result<Vec<Value>, _> = String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect();
    let lines = match lines {
        Ok(l) => l,
        Err(e) => return Resp::error(400, &format!("Invalid NDJSON body: {e}")),
    };
    let Some((header, ops)) = lines.split_first().filter(|(h, _)| h["key"] == "header") else {
        return Resp::error(400, "the first NDJSON line must be {\"key\": \"header\", ...}");
    };
    let summary = header["value"]["summary"].as_str().unwrap_or("").to_string();
    if summary.is_empty() {
        return Resp::error(400, "the commit summary must not be empty");
    }
    let head_oid = head.as_ref().map(|c| c.oid.clone());
    if let Some(parent) = header["value"]["parentCommit"].as_str() {
        if head_oid.as_deref() != Some(parent) {
            return Resp::error(412, "A commit has happened since. Please refresh and try again.");
        }
    }
    let mut tree = head.map(|c| c.tree).unwrap_or_default();
    for op in ops {
        if let Err(e) = apply(st, &mut tree, op) {
            return e;
        }
    }
    let oid = st.next_commit_oid(head_oid.as_deref(), &summary);
    let commit = Commit { oid: oid.clone(), summary, tree };
    if let Some(commits) = st.repos.get_mut(repo_id).and_then(|r| r.branches.get_mut(rev)) {
        commits.push(commit);
    }
    let url = format!("{}/{repo_id}/commit/{oid}", st.endpoint);
    Resp::json(200, json!({"success": true, "commitOid": oid, "commitUrl": url, "pullRequestUrl": null}))
}

/// One commit operation applied to `tree`.
fn apply(st: &State, tree: &mut BTreeMap<String, Entry>, op: &Value) -> Result<(), Resp> {
    let v = &op["value"];
    let path = v["path"].as_str().unwrap_or("");
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() || path.starts_with('/') || trimmed.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(Resp::error(400, &format!("Invalid path in commit: {path:?}")));
    }
    match op["key"].as_str().unwrap_or("") {
        "file" => {
            let content = v["content"].as_str().unwrap_or("");
            let bytes = match v["encoding"].as_str() {
                Some("base64") => base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|e| Resp::error(400, &format!("{path}: invalid base64 content: {e}")))?,
                _ => content.as_bytes().to_vec(),
            };
            tree.insert(path.to_string(), Entry::Regular(bytes));
        }
        "lfsFile" => {
            let oid = v["oid"].as_str().unwrap_or("");
            let Some(stored) = st.lfs.get(oid) else {
                let msg = format!("{path}: LFS pointer to object {oid} which was not uploaded");
                return Err(Resp::error(400, &msg));
            };
            let size = stored.len() as u64;
            if v["size"].as_u64().is_some_and(|s| s != size) {
                return Err(Resp::error(
                    400,
                    &format!("{path}: size {} but object {oid} has {size}", v["size"]),
                ));
            }
            tree.insert(path.to_string(), Entry::Lfs { oid: oid.to_string(), size });
        }
        "deletedFile" => {
            if tree.remove(path).is_none() {
                return Err(entry_not_found(&format!("{path} (A file with this name doesn't exist)")));
            }
        }
        "deletedFolder" => {
            let prefix = format!("{}/", path.trim_end_matches('/'));
            let before = tree.len();
            tree.retain(|p, _| !p.starts_with(&prefix));
            if tree.len() == before {
                return Err(entry_not_found(&format!("{path} (A folder with this name doesn't exist)")));
            }
        }
        other => return Err(Resp::error(400, &format!("Unknown commit operation {other:?}"))),
    }
    Ok(())
}

/// `POST /api/models/{repo}/branch/{branch}` with an optional `startingPoint` (default main).
pub fn create_branch(st: &mut State, r: &Req, who: Who, repo_id: &str, branch: &str) -> Resp {
    let repo = match writable(st, who, repo_id) {
        Ok(repo) => repo,
        Err(e) => return e,
    };
    if repo.branches.contains_key(branch) {
        return Resp::error(409, &format!("Reference already exists: refs/heads/{branch}"));
    }
    let body = if r.body.is_empty() { json!({}) } else { r.json().unwrap_or(json!({})) };
    let start = body["startingPoint"].as_str().unwrap_or("main");
    let Some(history) = repo.history(start) else {
        return revision_not_found(start);
    };
    if let Some(repo) = st.repos.get_mut(repo_id) {
        repo.branches.insert(branch.to_string(), history);
    }
    Resp::json(200, json!({}))
}
