//! Request handling: one fallback handler records each request, applies `fail_next`
//! injections, checks the token and dispatches on the decoded path (repo ids and file paths
//! contain slashes, so the path is matched by hand rather than by axum's router).

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use super::state::{Repo, State};
use super::{api, files, lfs, Recorded, READ_TOKEN, TOKEN};

/// A request with its body read and its path split into percent-decoded segments.
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub segs: Vec<String>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    /// The first value of query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        form_pairs(&self.query).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn json(&self) -> Result<Value, Resp> {
        serde_json::from_slice(&self.body).map_err(|e| Resp::error(400, &format!("Invalid JSON body: {e}")))
    }
}

/// A response before it becomes axum's.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(status: u16, value: Value) -> Resp {
        let body = serde_json::to_vec(&value).unwrap_or_default();
        Resp { status, headers: vec![], body }.header("Content-Type", "application/json")
    }

    /// The Hub's error shape: `{"error": msg}` and the `X-Error-Message` header.
    pub fn error(status: u16, msg: &str) -> Resp {
        Resp::json(status, json!({ "error": msg })).header("X-Error-Message", msg)
    }

    /// An error with the `X-Error-Code` the client maps to its typed errors
    /// (RepoNotFound, RevisionNotFound, EntryNotFound).
    pub fn error_code(status: u16, code: &str, msg: &str) -> Resp {
        Resp::error(status, msg).header("X-Error-Code", code)
    }

    pub fn header(mut self, name: &str, value: &str) -> Resp {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn into_response(self, head: bool) -> Response {
        let mut b = Response::builder().status(self.status);
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let body = if head { Body::empty() } else { Body::from(self.body) };
        b.body(body).unwrap_or_else(|_| Response::new(Body::from("bad response")))
    }
}

/// Who the `authorization` header says the caller is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Who {
    Anon,
    Read,
    Write,
}

pub async fn handle(AxState(shared): AxState<Arc<Mutex<State>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.map(|b| b.to_vec()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    let segs = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let r = Req {
        method: parts.method.to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body,
        path,
        segs,
    };
    let resp = {
        let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
        let idx = st.log.len();
        st.log.push(recorded(&r));
        let resp = match st.take_failure(&r.path) {
            Some(status) => Resp::error(status, &format!("test hub: injected failure {status}")),
            None => dispatch(&mut st, &r),
        };
        if let Some(rec) = st.log.get_mut(idx) {
            rec.status = resp.status;
        }
        resp
    };
    resp.into_response(r.method == "HEAD")
}

fn recorded(r: &Req) -> Recorded {
    Recorded {
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        content_type: r.header("content-type"),
        authorization: r.header("authorization"),
        body: r.body.clone(),
        status: 0,
    }
}

fn dispatch(st: &mut State, r: &Req) -> Resp {
    let who = match auth(r) {
        Ok(who) => who,
        Err(resp) => return resp,
    };
    let s: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    match (r.method.as_str(), s.as_slice()) {
        ("GET", ["api", "whoami-v2"]) => api::whoami(who),
        ("POST", ["api", "repos", "create"]) => api::create_repo(st, r, who),
        ("POST", ["api", "validate-yaml"]) => api::validate_yaml(r),
        (m, ["api", "models", ns, name, rest @ ..]) => {
            model_api(st, r, who, &format!("{ns}/{name}"), m, rest)
        }
        (_, ["lfs-upload", rest @ ..]) => lfs::transfer(st, r, rest),
        ("POST", [ns, name, "info", "lfs", "objects", op]) if name.ends_with(".git") => {
            let repo = format!("{ns}/{}", name.trim_end_matches(".git"));
            lfs::objects(st, r, who, &repo, op)
        }
        ("GET" | "HEAD", [ns, name, "resolve", rev, path @ ..]) if !path.is_empty() => {
            files::resolve(st, who, &format!("{ns}/{name}"), rev, &path.join("/"))
        }
        _ => Resp::error(404, "Sorry, we can't find the page you are looking for."),
    }
}

fn model_api(st: &mut State, r: &Req, who: Who, repo: &str, method: &str, rest: &[&str]) -> Resp {
    match (method, rest) {
        ("GET", []) => files::info(st, who, repo, "main"),
        ("GET", ["revision", rev]) => files::info(st, who, repo, rev),
        ("GET", ["tree", rev, path @ ..]) => files::tree(st, r, who, repo, rev, &path.join("/")),
        ("POST", ["paths-info", rev]) => files::paths_info(st, r, who, repo, rev),
        ("POST", ["preupload", rev]) => api::preupload(st, r, who, repo, rev),
        ("POST", ["commit", rev]) => api::commit(st, r, who, repo, rev),
        ("POST", ["branch", branch]) => api::create_branch(st, r, who, repo, branch),
        _ => Resp::error(404, "Sorry, we can't find the page you are looking for."),
    }
}

/// No header: anonymous; one of the two test tokens; anything else: 401 as the Hub answers.
fn auth(r: &Req) -> Result<Who, Resp> {
    let Some(h) = r.header("authorization") else {
        return Ok(Who::Anon);
    };
    let token = h.strip_prefix("Bearer ").unwrap_or(&h).trim();
    match token {
        TOKEN => Ok(Who::Write),
        READ_TOKEN => Ok(Who::Read),
        _ => Err(Resp::error(401, "Invalid credentials in Authorization header")),
    }
}

/// Repo `repo` if `who` may read it (a private repo needs a token; anonymous callers get 401,
/// as the Hub answers without revealing whether the repo exists).
pub fn readable<'a>(st: &'a State, who: Who, repo: &str) -> Result<&'a Repo, Resp> {
    match st.repos.get(repo) {
        Some(r) if !r.private || who != Who::Anon => Ok(r),
        _ => Err(repo_not_found(who)),
    }
}

/// Repo `repo` if `who` may write to it: no token 401, read-only token 403.
pub fn writable<'a>(st: &'a State, who: Who, repo: &str) -> Result<&'a Repo, Resp> {
    if who == Who::Anon {
        return Err(Resp::error(401, "Invalid username or password."));
    }
    let r = st.repos.get(repo).ok_or_else(|| repo_not_found(who))?;
    if who == Who::Read {
        let msg = format!("You don't have the rights to write to {repo}: the token is read-only");
        return Err(Resp::error(403, &msg));
    }
    Ok(r)
}

fn repo_not_found(who: Who) -> Resp {
    let status = if who == Who::Anon { 401 } else { 404 };
    Resp::error_code(status, "RepoNotFound", "Repository not found")
}

pub fn revision_not_found(rev: &str) -> Resp {
    Resp::error_code(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"))
}

pub fn entry_not_found(path: &str) -> Resp {
    Resp::error_code(404, "EntryNotFound", &format!("Entry not found: {path}"))
}

/// `/api/models/user/x/preupload/main` -> `/api/models/{repo}/preupload/{rev}` and alike.
pub fn path_shape(path: &str) -> String {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "models", _, _] => "/api/models/{repo}".to_string(),
        ["api", "models", _, _, action, _, rest @ ..] => {
            let rev = if *action == "branch" { "{branch}" } else { "{rev}" };
            let tail = if rest.is_empty() { "" } else { "/{path}" };
            format!("/api/models/{{repo}}/{action}/{rev}{tail}")
        }
        ["lfs-upload", _] => "/lfs-upload/{oid}".to_string(),
        ["lfs-upload", _, "part", _] => "/lfs-upload/{oid}/part/{n}".to_string(),
        ["lfs-upload", _, "complete"] => "/lfs-upload/{oid}/complete".to_string(),
        [_, name, "info", "lfs", "objects", op] if name.ends_with(".git") => {
            format!("/{{repo}}.git/info/lfs/objects/{op}")
        }
        [_, _, "resolve", _, _, ..] => "/{repo}/resolve/{rev}/{path}".to_string(),
        _ => path.to_string(),
    }
}

/// `%XX` decoding (invalid escapes are kept as they are).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=x+y` -> [("a", "1"), ("b", "x y")] (query strings and form bodies).
pub fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}
