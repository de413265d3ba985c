//! The test Hub (tests/hub_server) proved against the real `huggingface_hub` client: what the
//! Python client uploads it can download byte for byte, through the same endpoints the Hub has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use crate::common::scratch;
use crate::hub_server::{
    local_files, python_create_branch, python_download, python_upload, python_upload_to, HubOptions,
    Recorded, TestHub, READ_TOKEN, TOKEN,
};

/// A safetensors file holding one F32 tensor `w` of shape [2].
fn tiny_safetensors() -> Vec<u8> {
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&1.5f32.to_le_bytes());
    out.extend_from_slice(&(-2.0f32).to_le_bytes());
    out
}

const README: &str = "---\nlibrary_name: transformers\ntags:\n- rankforge\n---\n# proof\n";

/// The model folder of the proofs: an LFS-by-pattern file, an LFS-by-size file (over 1 KiB),
/// a nested regular file, an empty file and a model card.
fn model_folder(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let files: BTreeMap<String, Vec<u8>> = [
        ("model.safetensors", tiny_safetensors()),
        ("big.txt", big),
        ("nested/deeper/config.json", br#"{"n_layer": 2}"#.to_vec()),
        ("empty.txt", vec![]),
        ("README.md", README.as_bytes().to_vec()),
    ]
    .into_iter()
    .map(|(p, b)| (p.to_string(), b))
    .collect();
    for (p, b) in &files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b).unwrap();
    }
    files
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn shapes(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter().map(|r| format!("{} {}", r.shape(), r.status)).collect()
}

fn count(reqs: &[Recorded], shape: &str) -> usize {
    reqs.iter().filter(|r| r.shape() == shape).count()
}

fn lfs_hub() -> TestHub {
    TestHub::start_with(HubOptions { lfs_threshold: Some(1024), ..Default::default() })
}

#[test]
fn hub_python_upload_then_snapshot_download_is_byte_identical() {
    let dir = scratch("hub-proof-roundtrip");
    let files = model_folder(&dir.join("model"));
    let hub = lfs_hub();
    assert_ok(&python_upload(&hub, &dir.join("model"), "user/proof", false, TOKEN), "python upload");
    assert_eq!(hub.files("user/proof", "main"), files, "the commit holds the folder");
    let reqs = hub.requests();
    eprintln!("{:#?}", shapes(&reqs));

    // The LFS files (by pattern and by size) went through the batch API and a PUT each.
    let lfs: BTreeSet<String> = [sha256(&files["model.safetensors"]), sha256(&files["big.txt"])].into();
    let received: BTreeSet<String> = hub.lfs_objects_received().into_iter().collect();
    assert_eq!(received, lfs);
    assert_eq!(count(&reqs, "POST /{repo}.git/info/lfs/objects/batch"), 1, "{:#?}", shapes(&reqs));
    assert_eq!(count(&reqs, "PUT /lfs-upload/{oid}"), 2);
    let batch = reqs.iter().find(|r| r.shape().ends_with("objects/batch")).unwrap().json().unwrap();
    let asked: BTreeSet<String> =
        batch["objects"].as_array().unwrap().iter().map(|o| o["oid"].as_str().unwrap().to_string()).collect();
    assert_eq!(asked, lfs);

    // README.md was validated; the commit carries regular files inline and LFS files by oid.
    assert_eq!(count(&reqs, "POST /api/validate-yaml"), 2, "upload_folder and create_commit each validate");
    let yaml = reqs.iter().find(|r| r.shape() == "POST /api/validate-yaml").expect("validate-yaml");
    assert_eq!(yaml.json().unwrap()["content"], README);
    let commit = reqs.iter().find(|r| r.shape() == "POST /api/models/{repo}/commit/{rev}").unwrap();
    assert_eq!(commit.content_type.as_deref(), Some("application/x-ndjson"));
    let ops: BTreeMap<String, String> = commit.ndjson()[1..]
        .iter()
        .map(|l| (l["value"]["path"].as_str().unwrap().to_string(), l["key"].as_str().unwrap().to_string()))
        .collect();
    let want: BTreeMap<String, String> = [
        ("README.md", "file"),
        ("big.txt", "lfsFile"),
        ("empty.txt", "file"),
        ("model.safetensors", "lfsFile"),
        ("nested/deeper/config.json", "file"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(ops, want);

    let out = dir.join("download");
    assert_ok(&python_download(&hub, "user/proof", "main", &out, ""), "python download");
    assert_eq!(local_files(&out), files, "snapshot_download is byte-identical");
}

#[test]
fn hub_python_multipart_upload_puts_parts_and_completes() {
    let dir = scratch("hub-proof-multipart");
    let files = model_folder(&dir.join("model"));
    let hub = TestHub::start_with(HubOptions { lfs_threshold: Some(1024), multipart_chunk: Some(1000) });
    assert_ok(&python_upload(&hub, &dir.join("model"), "user/multi", false, TOKEN), "python upload");
    let reqs = hub.requests();
    // big.txt (3000 bytes) in 3 parts of 1000, model.safetensors (70 bytes) in 1.
    assert_eq!(count(&reqs, "PUT /lfs-upload/{oid}/part/{n}"), 4, "{:#?}", shapes(&reqs));
    assert_eq!(count(&reqs, "POST /lfs-upload/{oid}/complete"), 2);
    assert_eq!(count(&reqs, "PUT /lfs-upload/{oid}"), 0, "no basic transfer");
    let big = sha256(&files["big.txt"]);
    let parts: Vec<usize> = reqs
        .iter()
        .filter(|r| r.path.starts_with(&format!("/lfs-upload/{big}/part/")))
        .map(|r| r.body.len())
        .collect();
    assert_eq!(parts, [1000, 1000, 1000]);
    let completion = reqs.iter().find(|r| r.path == format!("/lfs-upload/{big}/complete")).unwrap();
    let listed = completion.json().unwrap()["parts"].as_array().unwrap().len();
    assert_eq!(listed, 3);
    assert!(hub.lfs_objects_received().contains(&big));
    let out = dir.join("download");
    assert_ok(&python_download(&hub, "user/multi", "main", &out, ""), "python download");
    assert_eq!(local_files(&out), files);
}

/// Re-uploading the same folder: the LFS batch answers "already stored" (no actions), so no
/// object bytes are sent, and preupload's oids let the client drop every unchanged file, so
/// there is no commit at all. A changed regular file is committed alone.
#[test]
fn hub_python_reupload_sends_no_lfs_bytes_and_skips_unchanged_files() {
    let dir = scratch("hub-proof-reupload");
    let model = dir.join("model");
    let files = model_folder(&model);
    let hub = lfs_hub();
    assert_ok(&python_upload(&hub, &model, "user/again", false, TOKEN), "first upload");
    hub.clear_requests();
    assert_ok(&python_upload(&hub, &model, "user/again", false, TOKEN), "second upload");
    let reqs = hub.requests();
    let batch = reqs.iter().find(|r| r.shape().ends_with("objects/batch")).expect("a batch request");
    assert_eq!(batch.json().unwrap()["objects"].as_array().unwrap().len(), 2);
    assert_eq!(hub.lfs_objects_received().len(), 2, "no object received twice");
    assert!(!reqs.iter().any(|r| r.path.starts_with("/lfs-upload/")), "{:#?}", shapes(&reqs));
    assert_eq!(count(&reqs, "POST /api/models/{repo}/commit/{rev}"), 0, "{:#?}", shapes(&reqs));
    assert_eq!(count(&reqs, "GET /api/models/{repo}/revision/{rev}"), 1, "repo_info instead of a commit");
    assert_eq!(hub.commits("user/again", "main").len(), 1);

    std::fs::write(model.join("nested/deeper/config.json"), br#"{"n_layer": 3}"#).unwrap();
    hub.clear_requests();
    assert_ok(&python_upload(&hub, &model, "user/again", false, TOKEN), "third upload");
    let reqs = hub.requests();
    let commit = reqs.iter().find(|r| r.shape() == "POST /api/models/{repo}/commit/{rev}").unwrap();
    let paths: Vec<String> =
        commit.ndjson()[1..].iter().map(|l| l["value"]["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths, ["nested/deeper/config.json"]);
    assert!(!reqs.iter().any(|r| r.path.starts_with("/lfs-upload/")));
    let mut want = files;
    want.insert("nested/deeper/config.json".into(), br#"{"n_layer": 3}"#.to_vec());
    assert_eq!(hub.files("user/again", "main"), want);
    assert_eq!(hub.commits("user/again", "main").len(), 2);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn hub_python_private_repo_needs_a_token_and_bad_tokens_raise() {
    let dir = scratch("hub-proof-private");
    let files = model_folder(&dir.join("model"));
    let hub = lfs_hub();
    assert_ok(&python_upload(&hub, &dir.join("model"), "user/secret", true, TOKEN), "private upload");
    assert!(hub.is_private("user/secret"));

    let out = python_download(&hub, "user/secret", "main", &dir.join("anon"), "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("error: RepositoryNotFoundError: 401 Client Error."), "{}", stderr(&out));
    assert_ok(
        &python_download(&hub, "user/secret", "main", &dir.join("read"), READ_TOKEN),
        "read-token download",
    );
    assert_eq!(local_files(&dir.join("read")), files);

    // A token the Hub does not know: 401 on create_repo (and on the repo_info the client
    // falls back to), raised as HfHubHTTPError carrying the server's message.
    let out = python_upload(&hub, &dir.join("model"), "user/other", false, "hf_not_a_token");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("error: HfHubHTTPError:") && err.contains("401"), "{err}");
    assert!(err.contains("Invalid credentials in Authorization header"), "{err}");
    assert!(!hub.repo_exists("user/other"));

    // A read-only token: create_repo's 403 is tolerated for an existing repo (exist_ok), then
    // the first write (preupload) is refused with 403.
    hub.clear_requests();
    let out = python_upload(&hub, &dir.join("model"), "user/secret", true, READ_TOKEN);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("error: HfHubHTTPError:") && err.contains("403 Forbidden"), "{err}");
    assert!(err.contains("the token is read-only"), "{err}");
    let statuses: Vec<String> = shapes(&hub.requests());
    assert!(statuses.contains(&"POST /api/repos/create 403".to_string()), "{statuses:#?}");
    assert!(statuses.contains(&"POST /api/models/{repo}/preupload/{rev} 403".to_string()), "{statuses:#?}");
    assert_eq!(hub.commits("user/secret", "main").len(), 1);
}

/// One 500 on preupload: the client's `http_backoff` waits 1 s and retries, as against the Hub.
/// The commit POST is not retried: one 500 there fails the upload.
#[test]
fn hub_python_retries_a_preupload_500_but_not_a_commit_500() {
    let dir = scratch("hub-proof-500");
    let files = model_folder(&dir.join("model"));
    let hub = lfs_hub();
    hub.fail_next("/preupload/", 500, 1);
    assert_ok(&python_upload(&hub, &dir.join("model"), "user/flaky", false, TOKEN), "python upload");
    let pre: Vec<u16> =
        hub.requests().iter().filter(|r| r.path.contains("/preupload/")).map(|r| r.status).collect();
    assert_eq!(pre, [500, 200]);
    assert_eq!(hub.files("user/flaky", "main"), files);

    std::fs::write(dir.join("model/step.txt"), b"more").unwrap();
    hub.fail_next("/commit/", 500, 1);
    let out = python_upload(&hub, &dir.join("model"), "user/flaky", false, TOKEN);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("error: HfHubHTTPError:") && stderr(&out).contains("500"),
        "{}",
        stderr(&out)
    );
    let commits: Vec<u16> =
        hub.requests().iter().filter(|r| r.path.contains("/commit/")).map(|r| r.status).collect();
    assert_eq!(commits, [200, 500], "the first upload's commit, then one failed try");
    assert_eq!(hub.files("user/flaky", "main"), files, "nothing committed");
}

#[test]
fn hub_python_create_branch_upload_and_download_it() {
    let dir = scratch("hub-proof-branch");
    let model = dir.join("model");
    let files = model_folder(&model);
    let hub = lfs_hub();
    assert_ok(&python_upload(&hub, &model, "user/branchy", false, TOKEN), "upload to main");
    assert_ok(&python_create_branch(&hub, "user/branchy", "dev"), "create_branch");
    let again = python_create_branch(&hub, "user/branchy", "dev");
    assert!(stderr(&again).contains("409"), "a second create_branch conflicts: {}", stderr(&again));

    std::fs::write(model.join("step.txt"), b"checkpoint 20").unwrap();
    assert_ok(&python_upload_to(&hub, &model, "user/branchy", "dev", "checkpoint 20"), "upload to dev");
    assert_eq!(hub.commits("user/branchy", "dev").len(), 2);
    assert_eq!(hub.commits("user/branchy", "dev")[1], "checkpoint 20");
    assert_eq!(hub.files("user/branchy", "main"), files, "main is untouched");

    let out = dir.join("dev");
    assert_ok(&python_download(&hub, "user/branchy", "dev", &out, ""), "download dev");
    let mut want = files;
    want.insert("step.txt".into(), b"checkpoint 20".to_vec());
    assert_eq!(local_files(&out), want);
}

fn git_blob_oid(b: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()));
    h.update(b);
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

/// What the client reads back: whoami, model_info's sha and siblings, the tree (flat and
/// recursive under a folder), paths-info, and the resolve headers behind file metadata.
#[test]
fn hub_python_reads_info_tree_paths_info_and_file_metadata() {
    let dir = scratch("hub-proof-inspect");
    let files = model_folder(&dir.join("model"));
    let hub = lfs_hub();
    let up = python_upload(&hub, &dir.join("model"), "user/seen", false, TOKEN);
    assert_ok(&up, "python upload");
    let up: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let head = hub.head("user/seen", "main").unwrap();
    assert_eq!(up["oid"], head.as_str());

    let paths = ["nested/deeper/config.json", "model.safetensors"];
    let out = crate::hub_server::python_inspect(&hub, "user/seen", &paths, READ_TOKEN);
    assert_ok(&out, "python inspect");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["whoami"], "user");
    assert_eq!(v["sha"], head.as_str());
    assert_eq!(v["private"], false);

    let st_sha = sha256(&files["model.safetensors"]);
    let cfg = &files["nested/deeper/config.json"];
    let st = &v["siblings"]["model.safetensors"];
    let st_len = files["model.safetensors"].len() as u64;
    assert_eq!((st["size"].as_u64(), st["lfs_sha256"].as_str()), (Some(st_len), Some(st_sha.as_str())));
    let c = &v["siblings"]["nested/deeper/config.json"];
    assert_eq!((c["blob_id"].as_str(), c["lfs_sha256"].is_null()), (Some(git_blob_oid(cfg).as_str()), true));
    assert_eq!(v["siblings"].as_object().unwrap().len(), files.len());

    let names = |key: &str| -> Vec<(String, String)> {
        let list = v[key].as_array().unwrap();
        let mut out: Vec<_> = list
            .iter()
            .map(|e| (e["path"].as_str().unwrap().into(), e["kind"].as_str().unwrap().into()))
            .collect();
        out.sort();
        out
    };
    let pair = |p: &str, k: &str| (p.to_string(), k.to_string());
    let root = ["README.md", "big.txt", "empty.txt", "model.safetensors"].map(|p| pair(p, "RepoFile"));
    let mut want_root = root.to_vec();
    want_root.push(pair("nested", "RepoFolder"));
    want_root.sort();
    assert_eq!(names("tree"), want_root);
    assert_eq!(
        names("nested"),
        [pair("nested/deeper", "RepoFolder"), pair("nested/deeper/config.json", "RepoFile")]
    );
    assert_eq!(
        names("paths_info"),
        [pair("model.safetensors", "RepoFile"), pair("nested/deeper/config.json", "RepoFile")]
    );

    // HEAD /resolve: ETag is the git blob id (regular) or the sha256 (LFS, via X-Linked-Etag),
    // the size comes from Content-Length / X-Linked-Size, the commit from X-Repo-Commit.
    let m = &v["meta"];
    assert_eq!(m["model.safetensors"]["etag"], st_sha.as_str());
    assert_eq!(m["model.safetensors"]["size"], st_len);
    assert_eq!(m["nested/deeper/config.json"]["etag"], git_blob_oid(cfg).as_str());
    assert_eq!(m["nested/deeper/config.json"]["size"], cfg.len() as u64);
    assert_eq!(m["model.safetensors"]["commit_hash"], head.as_str());
}

/// A model card whose YAML front matter is not closed: validate-yaml answers 400 with the
/// error, and the client refuses before uploading anything.
#[test]
fn hub_python_rejects_a_broken_model_card() {
    let dir = scratch("hub-proof-card");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("README.md"), "---\nlicense: mit\n# no closing line\n").unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    let hub = TestHub::start();
    let out = python_upload(&hub, &model, "user/card", false, TOKEN);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("error: ValueError: Invalid metadata in README.md."), "{err}");
    assert!(err.contains("not closed by a `---` line"), "{err}");
    assert!(hub.requests().iter().all(|r| !r.path.contains("/preupload/")));
    assert!(hub.commits("user/card", "main").is_empty());
}

/// One HTTP/1.1 request over a plain socket: (status, lower-cased header lines, body).
fn http(hub: &TestHub, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let addr = hub.endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = vec![];
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    (status, headers, raw[split + 4..].to_vec())
}

fn json_of(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

/// The server-side checks a client's failure paths meet: the 409 on an existing repo, object
/// bytes that do not hash to their oid, a commit naming an object never uploaded, an unknown
/// branch, a stale parent, and the 401/403 of missing, unknown and read-only tokens.
#[test]
fn hub_server_refuses_bad_objects_stale_parents_and_bad_tokens() {
    let hub = TestHub::start();
    let create = br#"{"name": "raw", "organization": null, "private": true}"#;
    assert_eq!(http(&hub, "POST", "/api/repos/create", Some(TOKEN), create).0, 200);
    let (status, headers, body) = http(&hub, "POST", "/api/repos/create", Some(TOKEN), create);
    assert_eq!(
        (status, json_of(&body)["error"].as_str()),
        (409, Some("You already created this model repo"))
    );
    assert!(headers.contains("x-error-message: you already created this model repo"), "{headers}");
    assert!(hub.is_private("user/raw"));

    let oid = sha256(b"hello");
    let batch = format!(
        r#"{{"operation": "upload", "transfers": ["basic"], "objects": [{{"oid": "{oid}", "size": 5}}]}}"#
    );
    let (status, _, body) =
        http(&hub, "POST", "/user/raw.git/info/lfs/objects/batch", Some(TOKEN), batch.as_bytes());
    assert_eq!(status, 200);
    let href = json_of(&body)["objects"][0]["actions"]["upload"]["href"].as_str().unwrap().to_string();
    let put = href.trim_start_matches(&hub.endpoint).to_string();
    assert_eq!(http(&hub, "PUT", &put, None, b"hellx").0, 400, "bytes that are not the oid's");
    assert!(hub.lfs_objects_received().is_empty());
    assert_eq!(http(&hub, "PUT", &put, None, b"hello").0, 200);
    assert_eq!(hub.lfs_objects_received(), [oid.clone()]);
    let (_, _, body) =
        http(&hub, "POST", "/user/raw.git/info/lfs/objects/batch", Some(TOKEN), batch.as_bytes());
    assert!(json_of(&body)["objects"][0].get("actions").is_none(), "a stored object gets no actions");

    let header = r#"{"key": "header", "value": {"summary": "raw"}}"#;
    let lfs_line = |o: &str| {
        format!(r#"{{"key": "lfsFile", "value": {{"path": "w.bin", "algo": "sha256", "oid": "{o}"}}}}"#)
    };
    let commit = |lines: &[&str]| format!("{}\n", lines.join("\n"));
    let unknown = commit(&[header, &lfs_line(&"ab".repeat(32))]);
    let (status, _, body) =
        http(&hub, "POST", "/api/models/user/raw/commit/main", Some(TOKEN), unknown.as_bytes());
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let good = commit(&[header, &lfs_line(&oid)]);
    let (status, headers, _) =
        http(&hub, "POST", "/api/models/user/raw/commit/nope", Some(TOKEN), good.as_bytes());
    assert!(status == 404 && headers.contains("x-error-code: revisionnotfound"), "{headers}");
    let (status, _, body) =
        http(&hub, "POST", "/api/models/user/raw/commit/main", Some(TOKEN), good.as_bytes());
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["commitOid"].as_str(), hub.head("user/raw", "main").as_deref());
    assert_eq!(hub.files("user/raw", "main")["w.bin"], b"hello");
    let stale = r#"{"key": "header", "value": {"summary": "late", "parentCommit": "0000000000000000000000000000000000000000"}}"#;
    let stale = commit(&[stale, &lfs_line(&oid)]);
    assert_eq!(http(&hub, "POST", "/api/models/user/raw/commit/main", Some(TOKEN), stale.as_bytes()).0, 412);

    let path = "/api/models/user/raw/commit/main";
    assert_eq!(http(&hub, "POST", path, Some(READ_TOKEN), good.as_bytes()).0, 403);
    assert_eq!(http(&hub, "POST", path, None, good.as_bytes()).0, 401);
    let (status, headers, _) = http(&hub, "POST", path, Some("hf_nope"), good.as_bytes());
    assert!(status == 401 && headers.contains("invalid credentials in authorization header"), "{headers}");
    assert_eq!(hub.commits("user/raw", "main"), ["raw"]);
    let (status, headers, _) = http(&hub, "GET", "/api/models/user/raw", None, b"");
    assert!(status == 401 && headers.contains("x-error-code: reponotfound"), "private: {headers}");
    let (_, _, body) = http(&hub, "GET", "/api/whoami-v2", Some(READ_TOKEN), b"");
    assert_eq!(json_of(&body)["auth"]["accessToken"]["role"], "read");
}
