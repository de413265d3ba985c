//! Uploads to the Hugging Face Hub, speaking the protocol of the `huggingface_hub` client
//! (2.4.0, its Git LFS path: what it does with `HF_HUB_DISABLE_XET=1`), in the same order.
//! See docs/hub.md.
//!
//! ```no_run
//! use rankforge::hub::{Hub, RepoId, UploadOptions};
//! let hub = Hub::from_env()?;          // HF_ENDPOINT, HF_TOKEN / HUGGING_FACE_HUB_TOKEN / token file
//! let user = hub.check_write()?;       // GET /api/whoami-v2: a token that can write, before training
//! let repo = RepoId::parse("user/my-model")?.with_namespace(&user.name);
//! let info = hub.push("runs/x/final".as_ref(), &repo, &UploadOptions::default())?;
//! println!("{}", info.commit_url);
//! # Ok::<(), rankforge::error::Error>(())
//! ```
//!
//! [`Hub::push`] is `create_repo(exist_ok=True)`, `create_branch(exist_ok=True)` for a revision
//! other than `main`, then `upload_folder`: list the files (without `.git/` and
//! `.cache/huggingface/`), `validate-yaml` for a `README.md`, preupload (≤ 256 files a request)
//! to learn each file's mode and the Hub's oid, the LFS batch and object uploads, and one NDJSON
//! commit of the files that changed. The local directory is only read.

pub mod auth;
pub mod publish;
mod http;
mod lfs;
pub mod repo_id;
pub mod upload;

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

pub use http::{backoff_schedule, retry_base_from_env, MAX_RETRIES, RETRY_BASE_ENV};
pub use lfs::LfsStats;
pub use repo_id::{validate_repo_id, RepoId};

use crate::error::{Error, Result};
use auth::{Token, TokenSource};
use http::{malformed, Body, Http, Request};
use upload::{LocalFile, UploadMode};

/// The default branch.
pub const DEFAULT_REVISION: &str = "main";
/// The commit summary when none is given.
pub const DEFAULT_COMMIT_MESSAGE: &str = "Upload folder using rankforge";

/// A connection to a Hub: endpoint and token.
pub struct Hub {
    http: Http,
    token: Token,
}

/// The token's user, from `whoami-v2`.
#[derive(Debug, Clone, PartialEq)]
pub struct WhoAmI {
    pub name: String,
    /// Organisations the user belongs to.
    pub orgs: Vec<String>,
    /// The access token's role: `"write"`, `"read"`, `"fineGrained"`, … (`None` when not said).
    pub role: Option<String>,
}

/// What [`Hub::push`] does besides the folder.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Create the repo private (an existing repo keeps its visibility).
    pub private: bool,
    /// Branch to commit to (`None`: `main`); created from `main` when it does not exist.
    pub revision: Option<String>,
    /// Commit summary (`None`: [`DEFAULT_COMMIT_MESSAGE`]).
    pub commit_message: Option<String>,
    /// Folder in the repo to upload into (`None`: the root).
    pub path_in_repo: Option<String>,
}

/// The commit a push made (or, when nothing changed, the revision's head).
#[derive(Debug, Clone, PartialEq)]
pub struct CommitInfo {
    pub commit_url: String,
    pub oid: String,
    /// Files in the commit (0 when every file was already on the Hub).
    pub files_committed: usize,
    pub lfs: LfsStats,
}

impl Hub {
    /// Endpoint and token from the environment, as the Python client reads them; no token is
    /// an [`Error::HubAuth`].
    pub fn from_env() -> Result<Hub> {
        let endpoint = auth::endpoint_from_env();
        let token = auth::token_from_env().ok_or_else(|| {
            Error::HubAuth(format!(
                "no Hugging Face token for {endpoint}: set HF_TOKEN (or HUGGING_FACE_HUB_TOKEN), or write it to {} (`hf auth login`)",
                auth::token_path(&|k| std::env::var(k).ok()).display()
            ))
        })?;
        Hub::with_token(&endpoint, token, retry_base_from_env())
    }

    /// A Hub at `endpoint` with `token`; `retry_base` is the first back-off wait.
    pub fn new(endpoint: &str, token: &str, retry_base: Duration) -> Result<Hub> {
        Hub::with_token(endpoint, Token { value: token.to_string(), source: TokenSource::Env }, retry_base)
    }

    fn with_token(endpoint: &str, token: Token, retry_base: Duration) -> Result<Hub> {
        Ok(Hub { http: Http::new(endpoint, &token.value, retry_base)?, token })
    }

    pub fn endpoint(&self) -> &str {
        &self.http.endpoint
    }

    /// `GET /api/whoami-v2`. A 401 is an [`Error::HubAuth`] naming where the token came from.
    pub fn whoami(&self) -> Result<WhoAmI> {
        let url = format!("{}/api/whoami-v2", self.http.endpoint);
        let req = Request::new("whoami", Method::GET, url, Body::Empty);
        let reply = match self.http.send_json(&req) {
            Err(Error::Hub { status: Some(401), msg, .. }) => {
                let from = match self.token.source {
                    TokenSource::Env => "the token from HF_TOKEN (or HUGGING_FACE_HUB_TOKEN)",
                    TokenSource::File => "the stored token",
                };
                return Err(Error::HubAuth(format!("{} refuses {from}: invalid user token ({msg})", self.http.endpoint)));
            }
            r => r?,
        };
        let name = reply.get("name").and_then(Value::as_str).ok_or_else(|| malformed(&req, "no `name` in the reply"))?;
        let orgs = reply
            .get("orgs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|o| o.get("name").and_then(Value::as_str)).map(str::to_string).collect())
            .unwrap_or_default();
        let role = reply.pointer("/auth/accessToken/role").and_then(Value::as_str).map(str::to_string);
        Ok(WhoAmI { name: name.to_string(), orgs, role })
    }

    /// [`whoami`](Self::whoami), refusing a read-only token: the check to run before training.
    pub fn check_write(&self) -> Result<WhoAmI> {
        let who = self.whoami()?;
        if who.role.as_deref() == Some("read") {
            return Err(Error::HubAuth(format!(
                "the Hugging Face token of user '{}' is read-only: {} would refuse the upload; use a token with the write role",
                who.name, self.http.endpoint
            )));
        }
        Ok(who)
    }

    /// `POST /api/repos/create` for model repo `repo`; an existing repo (409) is fine.
    pub fn create_repo(&self, repo: &RepoId, private: bool) -> Result<()> {
        let body = json!({
            "name": repo.name,
            "organization": repo.namespace,
            "visibility": if private { "private" } else { "public" },
        });
        let req = Request::new(format!("create repo {repo}"), Method::POST, format!("{}/api/repos/create", self.http.endpoint), Body::Json(body));
        match self.http.send_ok(&req) {
            Ok(_) | Err(Error::Hub { status: Some(409), .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /api/models/{repo}/branch/{branch}` (from `main`); an existing branch (409) is fine.
    pub fn create_branch(&self, repo: &RepoId, branch: &str) -> Result<()> {
        let url = format!("{}/api/models/{repo}/branch/{}", self.http.endpoint, quote(branch));
        let req = Request::new(format!("create branch {branch} of {repo}"), Method::POST, url, Body::Json(json!({})));
        match self.http.send_ok(&req) {
            Ok(_) | Err(Error::Hub { status: Some(409), .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the repo (and branch) and uploads `dir` into it: `rankforge push`.
    pub fn push(&self, dir: &Path, repo: &RepoId, opts: &UploadOptions) -> Result<CommitInfo> {
        self.create_repo(repo, opts.private)?;
        let revision = opts.revision.as_deref().unwrap_or(DEFAULT_REVISION);
        if revision != DEFAULT_REVISION {
            self.create_branch(repo, revision)?;
        }
        let message = opts.commit_message.as_deref().unwrap_or(DEFAULT_COMMIT_MESSAGE);
        self.upload_folder(dir, repo, revision, message, opts.path_in_repo.as_deref())
    }

    /// `upload_folder` + `create_commit` of the Python client, in its order.
    pub fn upload_folder(
        &self,
        dir: &Path,
        repo: &RepoId,
        revision: &str,
        commit_message: &str,
        path_in_repo: Option<&str>,
    ) -> Result<CommitInfo> {
        if commit_message.is_empty() {
            return Err(Error::Input("the commit message cannot be empty".into()));
        }
        let mut files = upload::list_folder(dir, path_in_repo)?;
        // `_prepare_upload_folder_additions` validates the folder's own README.md, then
        // `create_commit` the one committed at the repo root: the client asks twice.
        if let Some(readme) = files.iter().find(|f| f.abs == dir.join("README.md")) {
            self.validate_yaml(readme)?;
        }
        if let Some(readme) = files.iter().find(|f| f.path_in_repo == "README.md") {
            self.validate_yaml(readme)?;
        }
        self.fetch_upload_modes(repo, revision, &mut files)?;
        let mut lfs_files: Vec<LocalFile> = Vec::new();
        for f in files.iter_mut().filter(|f| f.mode == Some(UploadMode::Lfs) && !f.should_ignore) {
            f.sha256()?;
            lfs_files.push(f.clone());
        }
        let lfs = if lfs_files.is_empty() { LfsStats::default() } else { lfs::upload(&self.http, &repo.to_string(), revision, &lfs_files)? };
        for f in files.iter_mut().filter(|f| f.mode == Some(UploadMode::Lfs)) {
            f.sha256()?;
        }
        // Files the Hub already has at this revision are left out of the commit.
        let mut changed = Vec::new();
        for mut f in files {
            let local = f.local_oid()?;
            let same = f.remote_oid.is_some() && f.remote_oid == local;
            if !same {
                changed.push(f);
            }
        }
        if changed.is_empty() {
            let oid = self.revision_sha(repo, revision)?;
            let commit_url = format!("{}/{repo}/commit/{oid}", self.http.endpoint);
            return Ok(CommitInfo { commit_url, oid, files_committed: 0, lfs });
        }
        let body = upload::commit_payload(commit_message, "", &changed)?;
        let url = format!("{}/api/models/{repo}/commit/{}", self.http.endpoint, quote(revision));
        let data = Body::Bytes { data: body, content_type: "application/x-ndjson" };
        let req = Request::new(format!("commit to {repo}@{revision}"), Method::POST, url, data);
        let reply = self.http.send_json(&req)?;
        let field = |k: &str| reply.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(commit_url), Some(oid)) = (field("commitUrl"), field("commitOid")) else {
            return Err(malformed(&req, "no `commitUrl`/`commitOid` in the reply"));
        };
        let files_committed = changed.iter().filter(|f| !f.should_ignore).count();
        Ok(CommitInfo { commit_url, oid, files_committed, lfs })
    }

    /// `POST /api/validate-yaml` with the README's text; a 400 lists the Hub's errors.
    fn validate_yaml(&self, readme: &LocalFile) -> Result<()> {
        let content = String::from_utf8(readme.contents()?)
            .map_err(|_| Error::model(&readme.abs, "README.md is not UTF-8 text"))?;
        let url = format!("{}/api/validate-yaml", self.http.endpoint);
        let req = Request::new("validate README.md metadata", Method::POST, url, Body::Json(json!({"content": content, "repoType": "model"})));
        let (resp, attempts) = self.http.send(&req)?;
        if resp.status().as_u16() == 400 {
            let reply: Value = resp.json().unwrap_or(Value::Null);
            let errors: Vec<&str> = reply
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|e| e.get("message").and_then(Value::as_str)).collect())
                .unwrap_or_default();
            return Err(Error::model(&readme.abs, format!("the Hub refuses its metadata: {}", errors.join("; "))));
        }
        http::check(resp, &req.what, &req.url, attempts).map(|_| ())
    }

    /// `_fetch_upload_modes`: preupload in chunks; empty files are regular.
    fn fetch_upload_modes(&self, repo: &RepoId, revision: &str, files: &mut [LocalFile]) -> Result<()> {
        let gitignore = match files.iter().find(|f| f.path_in_repo == ".gitignore") {
            Some(g) => Some(String::from_utf8_lossy(&g.contents()?).into_owned()),
            None => None,
        };
        let url = format!("{}/api/models/{repo}/preupload/{}", self.http.endpoint, quote(revision));
        let mut infos = std::collections::HashMap::new();
        for chunk in files.chunks(upload::BATCH_MAX_FILES) {
            let body = Body::Json(upload::preupload_payload(chunk, gitignore.as_deref()));
            let req = Request::new(format!("preupload to {repo}@{revision}"), Method::POST, url.clone(), body);
            let reply = self.http.send_json(&req)?;
            for info in upload::parse_preupload(&reply).map_err(|m| malformed(&req, m))? {
                infos.insert(info.path.clone(), info);
            }
        }
        for f in files.iter_mut() {
            let info = infos.get(&f.path_in_repo).ok_or_else(|| Error::Hub {
                what: format!("preupload to {repo}@{revision}"),
                url: url.clone(),
                status: None,
                msg: format!("the reply has no entry for {}", f.path_in_repo),
                transient: false,
            })?;
            f.mode = Some(if f.size == 0 { UploadMode::Regular } else { info.mode });
            f.should_ignore = info.should_ignore;
            f.remote_oid = info.oid.clone();
        }
        Ok(())
    }

    /// The head commit of `revision` (`GET /api/models/{repo}/revision/{rev}`'s `sha`).
    fn revision_sha(&self, repo: &RepoId, revision: &str) -> Result<String> {
        let url = format!("{}/api/models/{repo}/revision/{}", self.http.endpoint, quote(revision));
        let req = Request::new(format!("repo info of {repo}@{revision}"), Method::GET, url, Body::Empty);
        let reply = self.http.send_json(&req)?;
        reply.get("sha").and_then(Value::as_str).map(str::to_string).ok_or_else(|| malformed(&req, "no `sha` in the reply"))
    }
}

/// `urllib.parse.quote(s, safe="")`.
fn quote(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'_').remove(b'.').remove(b'-').remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// A directory a push accepts: it has `config.json` or `adapter_config.json`, or a
/// `*.safetensors` / `*.bin` file at its top level.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::model(dir, format!("cannot read the model directory: {e}")))?;
    let has_model = entries.filter_map(|e| e.ok()).any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        e.path().is_file()
            && (name == "config.json" || name == "adapter_config.json" || name.ends_with(".safetensors") || name.ends_with(".bin"))
    });
    if !has_model {
        return Err(Error::model(dir, "no model files (config.json, adapter_config.json, *.safetensors or *.bin): nothing to push"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_is_pythons_with_no_safe_characters() {
        assert_eq!(quote("main"), "main");
        assert_eq!(quote("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(quote("a b~c.d_e-f"), "a%20b~c.d_e-f");
    }

    #[test]
    fn exit_codes_of_hub_errors() {
        let hub = |transient| Error::Hub { what: "commit".into(), url: "u".into(), status: Some(500), msg: "m".into(), transient };
        assert_eq!(hub(true).exit_code(), rankforge_proto::EXIT_HUB_UNAVAILABLE);
        assert_eq!(hub(true).exit_code(), 69);
        assert_eq!(hub(false).exit_code(), crate::error::EXIT_BAD_INPUT);
        assert_eq!(Error::HubAuth("no token".into()).exit_code(), crate::error::EXIT_BAD_INPUT);
        assert_eq!(hub(true).to_string(), "hub: commit: m (u)");
    }

    #[test]
    fn model_dir_check() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        let err = check_model_dir(d.path()).unwrap_err();
        assert!(err.to_string().contains("no model files"), "{err}");
        assert_eq!(err.exit_code(), crate::error::EXIT_BAD_INPUT);
        std::fs::write(d.path().join("adapter_model.safetensors"), "x").unwrap();
        check_model_dir(d.path()).unwrap();
        assert!(check_model_dir(&d.path().join("missing")).is_err());
    }
}
