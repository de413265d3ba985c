//! The test Hub: an in-process HTTP server speaking the Hugging Face Hub's protocol (repo
//! create, preupload, Git LFS batch + object upload, NDJSON commit, branches, repo info, tree,
//! paths-info, resolve), proved against the real `huggingface_hub` client in
//! tests/hub_server_proof.rs. docs/hub.md ("The test Hub") describes its endpoints and limits.
//! Every test starts its own server (`TestHub::start`), so tests share no state.
#![allow(dead_code)]

mod api;
mod files;
mod lfs;
mod routes;
mod state;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard};

use state::{Failure, State};

/// User "user", member of org "org", write access.
pub const TOKEN: &str = "hf_rankforge_test_write";
/// Same user, read-only (writes -> 403).
pub const READ_TOKEN: &str = "hf_rankforge_test_read";

#[derive(Default, Clone, Debug)]
pub struct HubOptions {
    /// Regular files at or over this size are "lfs" in preupload (default 10 MiB, as the Hub);
    /// paths matching the Hub's default .gitattributes LFS patterns (*.safetensors, *.bin,
    /// *.pt, *.pth, *.ckpt, *.h5, *.msgpack, *.onnx, *.npy, *.npz, *.pkl, *.model, *.zip,
    /// *.gz, *.tar, *.parquet, *.arrow, tfevents*) are always "lfs" unless empty.
    pub lfs_threshold: Option<u64>,
    /// When set, the LFS batch reply asks for multipart upload with this chunk size.
    pub multipart_chunk: Option<u64>,
}

/// One request as the server received it (`status`: what it answered).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Recorded {
    /// The body parsed as one JSON value.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body parsed as NDJSON lines (lines that are not JSON are skipped).
    pub fn ndjson(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The endpoint shape with repo/revision/oid replaced, e.g.
    /// "POST /api/models/{repo}/preupload/{rev}".
    pub fn shape(&self) -> String {
        format!("{} {}", self.method, routes::path_shape(&self.path))
    }
}

pub struct TestHub {
    /// "http://127.0.0.1:PORT"
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestHub {
    pub fn start() -> TestHub {
        TestHub::start_with(HubOptions::default())
    }

    pub fn start_with(opts: HubOptions) -> TestHub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
        let state = Arc::new(Mutex::new(State::new(endpoint.clone(), opts)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test hub runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new().fallback(routes::handle).with_state(shared);
                tokio::select! {
                    r = axum::serve(listener, app) => r.expect("test hub serves"),
                    _ = rx => {}
                }
            });
            // Idle keep-alive connections must not hold the shutdown.
            rt.shutdown_background();
        });
        TestHub { endpoint, state, shutdown: Some(tx), thread: Some(thread) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().log.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().log.clear();
    }

    /// The next `times` requests whose path contains `path_contains` answer `status` with an
    /// error body, without side effects.
    pub fn fail_next(&self, path_contains: &str, status: u16, times: usize) {
        let f = Failure { path_contains: path_contains.to_string(), status, left: times };
        self.lock().failures.push(f);
    }

    /// The files at the head of `revision` ("main", a branch or a commit oid) of model repo
    /// `repo`; empty when the repo or revision does not exist.
    pub fn files(&self, repo: &str, revision: &str) -> BTreeMap<String, Vec<u8>> {
        let st = self.lock();
        let Some(Ok(Some(commit))) = st.repos.get(repo).map(|r| r.lookup(revision)) else {
            return BTreeMap::new();
        };
        commit.tree.iter().map(|(p, e)| (p.clone(), st.content(e))).collect()
    }

    pub fn repo_exists(&self, repo: &str) -> bool {
        self.lock().repos.contains_key(repo)
    }

    pub fn is_private(&self, repo: &str) -> bool {
        self.lock().repos.get(repo).is_some_and(|r| r.private)
    }

    /// Commit summaries of `revision`, oldest first (a new repo has none).
    pub fn commits(&self, repo: &str, revision: &str) -> Vec<String> {
        let st = self.lock();
        let history = st.repos.get(repo).and_then(|r| r.history(revision)).unwrap_or_default();
        history.into_iter().map(|c| c.summary).collect()
    }

    /// The commit oid at the head of `revision`, if it has one.
    pub fn head(&self, repo: &str, revision: &str) -> Option<String> {
        let st = self.lock();
        let commit = st.repos.get(repo)?.lookup(revision).ok()??;
        Some(commit.oid.clone())
    }

    /// LFS objects whose bytes were received (basic PUT, or multipart completed), by oid.
    pub fn lfs_objects_received(&self) -> Vec<String> {
        self.lock().received.clone()
    }

    /// Shuts down (also on Drop).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The files under `dir` by relative path, skipping the `.cache/` folder that
/// `snapshot_download(local_dir=...)` writes its metadata to.
pub fn local_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read_dir").flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/");
            if rel == ".cache" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The real client (tests/py/hub_client.py in the venv) against `hub`; `token` "" runs without
/// a token. HF_HOME is a fresh temporary directory, so no cached token or file leaks in.
fn python_hub(hub: &TestHub, token: &str, args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let home = tempfile::tempdir().expect("HF_HOME tempdir");
    let mut cmd = Command::new(root.join(".venv/bin/python"));
    cmd.arg(root.join("tests/py/hub_client.py"))
        .args(args)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HOME", home.path())
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    if token.is_empty() {
        cmd.env_remove("HF_TOKEN");
    } else {
        cmd.env("HF_TOKEN", token);
    }
    cmd.output().expect("the venv's python runs")
}

/// `create_repo(repo, exist_ok=True, private=private)` then
/// `upload_folder(folder_path=dir, repo_id=repo, commit_message=...)` with the real client.
pub fn python_upload(hub: &TestHub, dir: &Path, repo: &str, private: bool, token: &str) -> Output {
    let dir = dir.to_string_lossy();
    let mut args = vec!["upload", dir.as_ref(), repo];
    if private {
        args.push("--private");
    }
    python_hub(hub, token, &args)
}

/// `upload` to `revision` with a commit message (the branch must exist).
pub fn python_upload_to(hub: &TestHub, dir: &Path, repo: &str, revision: &str, message: &str) -> Output {
    let dir = dir.to_string_lossy();
    let args = ["upload", dir.as_ref(), repo, "--revision", revision, "--message", message];
    python_hub(hub, TOKEN, &args)
}

/// `snapshot_download(repo, revision=revision, local_dir=out)` with the real client.
pub fn python_download(hub: &TestHub, repo: &str, revision: &str, out: &Path, token: &str) -> Output {
    let out = out.to_string_lossy();
    python_hub(hub, token, &["download", repo, out.as_ref(), "--revision", revision])
}

/// `hub_client.py inspect`: whoami, model_info (files_metadata), the root tree, the recursive
/// tree under the first path's top folder, paths-info and each path's file metadata, as JSON.
pub fn python_inspect(hub: &TestHub, repo: &str, paths: &[&str], token: &str) -> Output {
    let mut args = vec!["inspect", repo];
    args.extend_from_slice(paths);
    python_hub(hub, token, &args)
}

/// `HfApi().create_branch(repo, branch=branch, revision=from)` with the real client.
pub fn python_create_branch(hub: &TestHub, repo: &str, branch: &str) -> Output {
    python_hub(hub, TOKEN, &["branch", repo, branch])
}
