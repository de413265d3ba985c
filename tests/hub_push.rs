//! `rankforge push` against the test Hub (tests/hub_server): the real `huggingface_hub` client
//! downloads what it uploaded, its requests match the Python client's, unchanged files are not
//! re-sent, and a wrong token, a dead server or 5xx replies give the documented exit codes with
//! the directory untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::common::{bin, python, scratch, snapshot};
use crate::hub_server::{python_download, python_upload, HubOptions, Recorded, TestHub, READ_TOKEN, TOKEN};

/// Runs `rankforge push --model dir --repo repo extra...` against `endpoint` with `token` (none:
/// no token anywhere), a private HF_HOME and millisecond back-off.
fn push_to(endpoint: &str, token: Option<&str>, dir: &Path, repo: &str, extra: &[&str]) -> Output {
    let home = dir.parent().unwrap().join("hf_home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["push", "--model", dir.to_str().unwrap(), "--repo", repo])
        .args(extra)
        .env("RANKFORGE_LOG", "warn")
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", &home)
        .env("RANKFORGE_HUB_RETRY_BASE_MS", "5")
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_TOKEN_PATH");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().expect("rankforge runs")
}

fn push(hub: &TestHub, dir: &Path, repo: &str, extra: &[&str]) -> String {
    let out = push_to(&hub.endpoint, Some(TOKEN), dir, repo, extra);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push {repo} failed ({:?}):\n{err}", out.status);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The one `error:` line of a failed push with exit `code`.
fn push_fails(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "expected exit {code}, got {:?}:\n{err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line:\n{err}");
    lines[0].to_string()
}

/// A small model directory: config.json, a README with front matter, weights (LFS by name), a
/// 6 kB tokenizer.json (LFS when the threshold is lower), an empty file and a nested one, plus
/// `.git/` and `.cache/huggingface/` that must not be uploaded.
fn model_dir(name: &str) -> PathBuf {
    let dir = scratch(name).join("model");
    let w = |p: &str, data: &[u8]| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("config.json", br#"{"model_type": "gpt2", "n_layer": 2}"#);
    w("README.md", b"---\nlibrary_name: transformers\ntags:\n- rankforge\n---\n# tiny\n");
    w("model.safetensors", &(0..5000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
    w("tokenizer.json", format!("{{\"vocab\": \"{}\"}}", "ab".repeat(3000)).as_bytes());
    w("empty.txt", b"");
    w("extra/notes.txt", b"notes");
    w(".git/HEAD", b"ref: refs/heads/main\n");
    w(".cache/huggingface/upload/model.safetensors.metadata", b"x");
    dir
}

/// The files a push of `model_dir` must leave in the repo.
fn expected_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot(dir)
        .into_iter()
        .map(|(p, b)| (p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), b))
        .filter(|(p, _)| !p.starts_with(".git/") && !p.starts_with(".cache/"))
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn push_then_snapshot_download_is_byte_identical_and_loads_in_transformers() {
    let hub = TestHub::start_with(HubOptions { lfs_threshold: Some(4096), ..Default::default() });
    let fx = crate::common::fixture();
    let dir = scratch("hub-real").join("final");
    std::fs::create_dir_all(&dir).unwrap();
    for (p, bytes) in snapshot(&fx.run.join("final")) {
        let rel = p.strip_prefix(fx.run.join("final")).unwrap();
        std::fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
        std::fs::write(dir.join(rel), bytes).unwrap();
    }
    let before = snapshot(&dir);
    let url = push(&hub, &dir, "user/tiny", &["--private"]);
    assert!(url.starts_with(&format!("{}/user/tiny/commit/", hub.endpoint)), "{url}");
    assert!(hub.is_private("user/tiny"));
    assert_eq!(snapshot(&dir), before, "the pushed directory is unchanged");

    let out = dir.parent().unwrap().join("download");
    let dl = python_download(&hub, "user/tiny", "main", &out, TOKEN);
    assert!(dl.status.success(), "snapshot_download failed:\n{}", String::from_utf8_lossy(&dl.stderr));
    let got: BTreeMap<String, Vec<u8>> = expected_files(&out);
    assert_eq!(got, expected_files(&dir), "the download is byte-identical to final/");

    // The weights (by name) and every file over the 4 kB threshold went through LFS.
    let lfs = hub.lfs_objects_received();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(lfs.contains(&sha256_hex(&weights)), "model.safetensors not sent through LFS: {lfs:?}");
    for (path, bytes) in expected_files(&dir) {
        if bytes.len() >= 4096 {
            assert!(lfs.contains(&sha256_hex(&bytes)), "{path} ({} bytes) not sent through LFS", bytes.len());
        }
    }

    let load = Command::new(python())
        .args(["-c", "import sys, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]); print(type(m).__name__)"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(load.status.success(), "transformers cannot load the download:\n{}", String::from_utf8_lossy(&load.stderr));
}

/// `(shape, JSON keys or NDJSON line keys)` of each request; whoami and the LFS object bytes
/// carry no JSON.
fn shapes(reqs: &[Recorded]) -> Vec<(String, Vec<String>)> {
    reqs.iter()
        .map(|r| {
            let keys = if r.content_type.as_deref().is_some_and(|c| c.contains("ndjson")) {
                r.ndjson().iter().map(|l| format!("{}:{}", l["key"].as_str().unwrap_or("?"), keys_of(&l["value"]))).collect()
            } else {
                r.json().map(|v| vec![keys_of(&v)]).unwrap_or_default()
            };
            (r.shape(), keys)
        })
        .collect()
}

/// Sorted keys of an object and, for `files`/`objects` lists, of their first element.
fn keys_of(v: &Value) -> String {
    let Some(obj) = v.as_object() else { return String::new() };
    let mut keys: Vec<String> = obj
        .iter()
        .map(|(k, v)| match v.as_array().and_then(|a| a.first()) {
            Some(first) if first.is_object() => format!("{k}[{}]", keys_of(first)),
            _ => k.clone(),
        })
        .collect();
    keys.sort();
    keys.join(",")
}

/// `seq` with each run of LFS transfer requests (object and part PUTs, completions, verifies)
/// sorted.
fn transfers_sorted(mut seq: Vec<(String, Vec<String>)>) -> Vec<(String, Vec<String>)> {
    let transfer = |s: &str| s.starts_with("PUT ") || s.contains("/lfs-") || s.ends_with("/objects/verify");
    let mut i = 0;
    while i < seq.len() {
        let start = i;
        while i < seq.len() && transfer(&seq[i].0) {
            i += 1;
        }
        seq[start..i].sort();
        i = i.max(start + 1);
    }
    seq
}

#[test]
fn push_request_sequence_matches_the_python_clients() {
    // Two servers: the test Hub's LFS store is shared by its repos, so a second upload of the
    // same folder to the same server would find its objects stored.
    let opts = HubOptions { lfs_threshold: Some(4096), ..Default::default() };
    let (py_hub, hub) = (TestHub::start_with(opts.clone()), TestHub::start_with(opts));
    let dir = model_dir("hub-seq");
    let py = python_upload(&py_hub, &dir, "user/m", false, TOKEN);
    assert!(py.status.success(), "python upload_folder failed:\n{}", String::from_utf8_lossy(&py.stderr));
    push(&hub, &dir, "user/m", &["--message", "Upload folder using huggingface_hub"]);
    let ours = hub.requests();
    // rankforge checks the token first (whoami, so that a run fails before training); the
    // Python upload_folder does not. The rest must be the same.
    assert_eq!(ours[0].shape(), "GET /api/whoami-v2");
    let theirs = shapes(&py_hub.requests());
    assert!(theirs.iter().any(|(s, _)| s.starts_with("PUT ")), "the Python client sent LFS objects: {theirs:?}");
    // The client transfers LFS objects on a thread pool (lfs.py's thread_map): their PUTs and
    // verifies interleave in any order, so that phase compares as a multiset.
    assert_eq!(transfers_sorted(shapes(&ours[1..])), transfers_sorted(theirs), "rankforge's requests differ from huggingface_hub's");
    assert_eq!(hub.files("user/m", "main"), py_hub.files("user/m", "main"));
    assert_eq!(hub.files("user/m", "main"), expected_files(&dir));
    assert_eq!(hub.commits("user/m", "main"), py_hub.commits("user/m", "main"));
}

#[test]
fn a_repush_of_unchanged_files_sends_no_lfs_object_and_no_commit() {
    let hub = TestHub::start_with(HubOptions { lfs_threshold: Some(4096), ..Default::default() });
    let dir = model_dir("hub-repush");
    let first = push(&hub, &dir, "user/m", &[]);
    let objects = hub.lfs_objects_received().len();
    assert!(objects >= 2, "model.safetensors and tokenizer.json go through LFS: {objects}");
    assert_eq!(hub.commits("user/m", "main").len(), 1, "one commit (the test Hub makes no initial commit)");
    hub.clear_requests();
    let again = push(&hub, &dir, "user/m", &[]);
    assert_eq!(again, first, "nothing changed: the head commit is printed");
    assert_eq!(hub.lfs_objects_received().len(), objects);
    let reqs = hub.requests();
    assert!(!reqs.iter().any(|r| r.method == "PUT"), "no object bytes: {:?}", reqs.iter().map(Recorded::shape).collect::<Vec<_>>());
    assert!(!reqs.iter().any(|r| r.path.contains("/commit/")), "no commit for unchanged files");
    assert_eq!(hub.commits("user/m", "main").len(), 1);

    // One changed regular file: only it is committed, still no LFS bytes.
    std::fs::write(dir.join("extra/notes.txt"), b"new notes").unwrap();
    hub.clear_requests();
    push(&hub, &dir, "user/m", &["--message", "notes"]);
    let commit = hub.requests().into_iter().find(|r| r.path.contains("/commit/")).expect("a commit");
    let lines = commit.ndjson();
    let paths: Vec<&str> = lines[1..].iter().map(|l| l["value"]["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["extra/notes.txt"]);
    assert_eq!(hub.lfs_objects_received().len(), objects);
    assert_eq!(hub.files("user/m", "main")["extra/notes.txt"], b"new notes");
    assert_eq!(hub.commits("user/m", "main").last().map(String::as_str), Some("notes"));
}

#[test]
fn multipart_lfs_and_a_branch_and_a_folder_in_the_repo() {
    let hub = TestHub::start_with(HubOptions { multipart_chunk: Some(1024), ..Default::default() });
    let dir = model_dir("hub-multipart");
    push(&hub, &dir, "user/mp", &["--revision", "ckpt", "--path-in-repo", "step-10"]);
    let files = hub.files("user/mp", "ckpt");
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(files["step-10/model.safetensors"], weights);
    assert_eq!(files["step-10/config.json"], std::fs::read(dir.join("config.json")).unwrap());
    assert!(hub.lfs_objects_received().contains(&sha256_hex(&weights)));
    assert!(!hub.files("user/mp", "main").contains_key("step-10/config.json"), "main is untouched");
    let reqs = hub.requests();
    let shapes: Vec<String> = reqs.iter().map(Recorded::shape).collect();
    let parts = shapes.iter().filter(|s| *s == "PUT /lfs-upload/{oid}/part/{n}").count();
    assert_eq!(parts, weights.len().div_ceil(1024), "one PUT per 1 kB part: {shapes:?}");
    let done = reqs.iter().find(|r| r.shape() == "POST /lfs-upload/{oid}/complete").expect("the completion POST");
    assert_eq!(done.json().unwrap()["parts"].as_array().unwrap().len(), parts);
    assert!(!shapes.contains(&"PUT /lfs-upload/{oid}".to_string()), "no basic PUT: {shapes:?}");
    assert!(reqs.iter().any(|r| r.shape().contains("/branch/")), "the branch was created");
}

#[test]
fn a_wrong_or_missing_token_is_one_line_and_exit_2() {
    let hub = TestHub::start();
    let dir = model_dir("hub-token");
    let read = push_fails(&push_to(&hub.endpoint, Some(READ_TOKEN), &dir, "user/m", &[]), 2);
    assert!(read.contains("read-only"), "{read}");
    let garbage = push_fails(&push_to(&hub.endpoint, Some("hf_garbage"), &dir, "user/m", &[]), 2);
    assert!(garbage.contains("invalid user token") && garbage.contains("HF_TOKEN"), "{garbage}");
    let none = push_fails(&push_to(&hub.endpoint, None, &dir, "user/m", &[]), 2);
    assert!(none.contains("no Hugging Face token") && none.contains("HF_TOKEN"), "{none}");
    assert!(!hub.repo_exists("user/m"));
}

#[test]
fn a_closed_port_is_retried_then_exit_69_with_the_dir_intact() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = model_dir("hub-down");
    let before = snapshot(&dir);
    let out = push_to(&format!("http://127.0.0.1:{port}"), Some(TOKEN), &dir, "user/m", &[]);
    let line = push_fails(&out, 69);
    assert!(line.contains("cannot reach the Hub after 6 attempts") && line.contains(&port.to_string()), "{line}");
    let retries = String::from_utf8_lossy(&out.stderr).matches("retry ").count();
    assert_eq!(retries, 5, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn a_commit_that_fails_twice_with_503_succeeds_on_retry() {
    let hub = TestHub::start();
    let dir = model_dir("hub-503");
    hub.fail_next("/commit/", 503, 2);
    push(&hub, &dir, "user/m", &[]);
    let commits = hub.requests().iter().filter(|r| r.path.contains("/commit/")).count();
    assert_eq!(commits, 3, "two 503s, then the commit");
    assert_eq!(hub.files("user/m", "main"), expected_files(&dir));
}

#[test]
fn persistent_500s_exit_69_and_leave_the_dir_byte_identical() {
    let hub = TestHub::start();
    let dir = model_dir("hub-500");
    let before = snapshot(&dir);
    hub.fail_next("/commit/", 500, 100);
    let line = push_fails(&push_to(&hub.endpoint, Some(TOKEN), &dir, "user/m", &[]), 69);
    assert!(line.contains("commit to user/m@main") && line.contains("HTTP 500 (after 6 attempts)"), "{line}");
    assert_eq!(snapshot(&dir), before);
    assert!(hub.commits("user/m", "main").is_empty(), "no commit was made");
}

#[test]
fn bad_repo_ids_and_a_dir_without_model_files_are_exit_2() {
    let dir = model_dir("hub-bad");
    // No server: these are refused before any request.
    for repo in ["user/a/b", "user/-m", "user/m.git", "user/a--b", "us er/m", ""] {
        let line = push_fails(&push_to("http://127.0.0.1:9", Some(TOKEN), &dir, repo, &[]), 2);
        assert!(line.contains("repo id"), "{repo}: {line}");
    }
    let empty = dir.parent().unwrap().join("notes");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "x").unwrap();
    let line = push_fails(&push_to("http://127.0.0.1:9", Some(TOKEN), &empty, "user/m", &[]), 2);
    assert!(line.contains("no model files"), "{line}");
}
