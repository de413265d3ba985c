//! The files of a folder upload and the payloads the Hub's preupload and commit endpoints take,
//! as huggingface_hub builds them (`hf_api._prepare_upload_folder_additions`,
//! `_commit_api._fetch_upload_modes`, `_commit_api._prepare_commit_payload`).

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};
use sha1::Digest as _;

use crate::error::{Error, IoContext, Result};

/// Files per preupload (and LFS batch) request, the client's `UPLOAD_BATCH_MAX_NUM_FILES`.
pub const BATCH_MAX_FILES: usize = 256;
/// Bytes of each file sent as its preupload sample.
pub const SAMPLE_LEN: usize = 512;

/// How the Hub stores a file (the preupload reply's `uploadMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    Regular,
    Lfs,
}

/// One file to add (`CommitOperationAdd`).
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Path in the repository, `/`-separated.
    pub path_in_repo: String,
    /// The file on disk (read only).
    pub abs: PathBuf,
    pub size: u64,
    /// Its first [`SAMPLE_LEN`] bytes.
    pub sample: Vec<u8>,
    /// Filled by the preupload reply.
    pub mode: Option<UploadMode>,
    pub should_ignore: bool,
    /// The Hub's oid of the file at the revision, when it has one.
    pub remote_oid: Option<String>,
    /// sha256 hex of the contents, computed when the file goes through LFS.
    pub sha256: Option<String>,
}

impl LocalFile {
    fn new(path_in_repo: String, abs: PathBuf) -> Result<LocalFile> {
        let size = std::fs::metadata(&abs).at(&abs)?.len();
        let mut sample = Vec::with_capacity(SAMPLE_LEN);
        std::fs::File::open(&abs).at(&abs)?.take(SAMPLE_LEN as u64).read_to_end(&mut sample).at(&abs)?;
        Ok(LocalFile { path_in_repo, abs, size, sample, mode: None, should_ignore: false, remote_oid: None, sha256: None })
    }

    pub fn contents(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.abs).at(&self.abs)
    }

    /// The sha256 of the contents (streamed, cached).
    pub fn sha256(&mut self) -> Result<String> {
        if let Some(s) = &self.sha256 {
            return Ok(s.clone());
        }
        let mut f = std::fs::File::open(&self.abs).at(&self.abs)?;
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut f, &mut h).at(&self.abs)?;
        let hex = hex(&h.finalize());
        self.sha256 = Some(hex.clone());
        Ok(hex)
    }

    /// The oid compared with the preupload's: sha256 for LFS, the git blob sha1 for regular
    /// files (`CommitOperationAdd._local_oid`).
    pub fn local_oid(&mut self) -> Result<Option<String>> {
        Ok(match self.mode {
            None => None,
            Some(UploadMode::Lfs) => Some(self.sha256()?),
            Some(UploadMode::Regular) => Some(git_blob_sha1(&self.contents()?)),
        })
    }
}

/// git's object id of a blob: sha1 of `blob <len>\0<data>` (`utils.sha.git_hash`).
pub fn git_blob_sha1(data: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The files of `dir` to upload, in the client's order (paths sorted component by component, as
/// Python sorts `Path`s), without `.git/` and `.cache/huggingface/` (the client's
/// `DEFAULT_IGNORE_PATTERNS`), prefixed with `path_in_repo`. Like the client it refuses any
/// other file under a `.cache` folder (the Hub forbids committing one).
pub fn list_folder(dir: &Path, path_in_repo: Option<&str>) -> Result<Vec<LocalFile>> {
    if !dir.is_dir() {
        return Err(Error::model(dir, "not a directory"));
    }
    let mut rels: Vec<Vec<String>> = Vec::new();
    walk(dir, &mut Vec::new(), &mut rels)?;
    rels.sort();
    let prefix = match path_in_repo.map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("{p}/"),
        _ => String::new(),
    };
    let mut files = Vec::new();
    for parts in rels.into_iter().filter(|p| !default_ignored(p)) {
        let rel = parts.join("/");
        let in_repo = validate_path_in_repo(&format!("{prefix}{rel}"))?;
        files.push(LocalFile::new(in_repo, dir.join(&rel))?);
    }
    Ok(files)
}

fn walk(dir: &Path, parts: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> Result<()> {
    let here = dir.join(parts.join("/"));
    for entry in std::fs::read_dir(&here).at(&here)? {
        let entry = entry.at(&here)?;
        let name = entry.file_name().into_string().map_err(|n| Error::model(&here, format!("file name {n:?} is not UTF-8")))?;
        let path = entry.path();
        let file_type = entry.file_type().at(&path)?;
        parts.push(name);
        if file_type.is_dir() {
            walk(dir, parts, out)?;
        } else if path.is_file() {
            // Regular files and links to files (`Path.is_file` follows links).
            out.push(parts.clone());
        }
        parts.pop();
    }
    Ok(())
}

/// `.git`, `.git/*`, `*/.git`, `**/.git/**` and the same for `.cache/huggingface` (fnmatch's
/// `*` crosses `/`): any `.git` component, or `.cache` followed by `huggingface`.
fn default_ignored(parts: &[String]) -> bool {
    parts.iter().any(|p| p == ".git") || parts.windows(2).any(|w| w[0] == ".cache" && w[1] == "huggingface")
}

/// `_validate_path_in_repo`: no `..` or `.` path, no `.git`/`.cache` folder.
fn validate_path_in_repo(path: &str) -> Result<String> {
    let path = path.strip_prefix('/').unwrap_or(path);
    if path == "." || path.split('/').any(|p| p == "..") {
        return Err(Error::Input(format!("invalid path in repo: '{path}'")));
    }
    let path = path.strip_prefix("./").unwrap_or(path);
    for forbidden in [".git", ".cache"] {
        if path.split('/').any(|p| p == forbidden) {
            return Err(Error::Input(format!(
                "cannot upload files under a '{forbidden}/' folder (path: '{path}'); move or remove it"
            )));
        }
    }
    Ok(path.to_string())
}

/// The preupload request body for `files`: `{"files": [{"path", "sample", "size"}],
/// "gitIgnore"?}`.
pub fn preupload_payload(files: &[LocalFile], gitignore: Option<&str>) -> Value {
    let entries: Vec<Value> =
        files.iter().map(|f| json!({"path": f.path_in_repo, "sample": b64(&f.sample), "size": f.size})).collect();
    let mut payload = json!({ "files": entries });
    if let Some(g) = gitignore {
        payload["gitIgnore"] = json!(g);
    }
    payload
}

/// One file of a preupload reply.
#[derive(Debug, Clone, PartialEq)]
pub struct PreuploadInfo {
    pub path: String,
    pub mode: UploadMode,
    pub should_ignore: bool,
    pub oid: Option<String>,
}

/// Parses a preupload reply (`_validate_preupload_info`); `Err` says what is wrong.
pub fn parse_preupload(reply: &Value) -> std::result::Result<Vec<PreuploadInfo>, String> {
    let files = reply.get("files").and_then(Value::as_array).ok_or("no `files` list")?;
    files
        .iter()
        .map(|f| {
            let path = f.get("path").and_then(Value::as_str).ok_or("a file without `path`")?;
            let mode = match f.get("uploadMode").and_then(Value::as_str) {
                Some("lfs") => UploadMode::Lfs,
                Some("regular") => UploadMode::Regular,
                other => return Err(format!("{path}: uploadMode {other:?} (expected \"lfs\" or \"regular\")")),
            };
            let should_ignore = f.get("shouldIgnore").and_then(Value::as_bool).unwrap_or(false);
            let oid = f.get("oid").and_then(Value::as_str).map(str::to_string);
            Ok(PreuploadInfo { path: path.to_string(), mode, should_ignore, oid })
        })
        .collect()
}

/// The NDJSON commit: a `header` line, then per file a `file` (regular, base64 contents) or
/// `lfsFile` line (sha256 oid and size), skipping ignored files. Every LFS file must have its
/// sha256 computed.
pub fn commit_payload(summary: &str, description: &str, files: &[LocalFile]) -> Result<Vec<u8>> {
    let mut lines = vec![json!({"key": "header", "value": {"summary": summary, "description": description}})];
    for f in files.iter().filter(|f| !f.should_ignore) {
        lines.push(match f.mode {
            Some(UploadMode::Regular) => json!({"key": "file", "value": {
                "content": b64(&f.contents()?), "path": f.path_in_repo, "encoding": "base64"}}),
            Some(UploadMode::Lfs) => {
                let oid = f.sha256.clone().ok_or_else(|| Error::Input(format!("{}: sha256 not computed", f.path_in_repo)))?;
                json!({"key": "lfsFile", "value": {"path": f.path_in_repo, "algo": "sha256", "oid": oid, "size": f.size}})
            }
            None => return Err(Error::Input(format!("{}: no upload mode from preupload", f.path_in_repo))),
        });
    }
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_is_gits() {
        // huggingface_hub.utils.sha.git_hash's docstring, and `git hash-object` of an empty file.
        assert_eq!(git_blob_sha1(b"Hello, World!"), "b45ef6fec89518d314f546fd6c3025367b721684");
        assert_eq!(git_blob_sha1(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    fn folder() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, data: &[u8]| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        w("config.json", b"{}");
        w("a.txt", b"x");
        w("a/b.txt", &[7u8; 600]);
        w(".git/HEAD", b"ref");
        w("sub/.git", b"gitdir");
        w(".cache/huggingface/upload/x.lock", b"");
        w("sub/.cache/huggingface/y", b"");
        w(".hidden", b"h");
        d
    }

    #[test]
    fn folder_listing_order_ignores_and_samples() {
        let d = folder();
        let files = list_folder(d.path(), None).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path_in_repo.as_str()).collect();
        // Python sorts Paths by components: "a/b.txt" before "a.txt" ('a' < 'a.txt').
        assert_eq!(paths, [".hidden", "a/b.txt", "a.txt", "config.json"]);
        assert_eq!(files[1].size, 600);
        assert_eq!(files[1].sample, vec![7u8; SAMPLE_LEN]);
        let prefixed = list_folder(d.path(), Some("/ckpt/step1/")).unwrap();
        assert_eq!(prefixed[3].path_in_repo, "ckpt/step1/config.json");
    }

    #[test]
    fn other_cache_folders_are_refused_as_the_client_does() {
        let d = folder();
        std::fs::create_dir_all(d.path().join(".cache/other")).unwrap();
        std::fs::write(d.path().join(".cache/other/f"), b"").unwrap();
        let err = list_folder(d.path(), None).unwrap_err().to_string();
        assert!(err.contains("'.cache/' folder"), "{err}");
    }

    #[test]
    fn preupload_payload_has_base64_samples() {
        let d = folder();
        let files = list_folder(d.path(), None).unwrap();
        let p = preupload_payload(&files[2..3], None);
        assert_eq!(p, json!({"files": [{"path": "a.txt", "sample": "eA==", "size": 1}]}));
        let sample = base64::engine::general_purpose::STANDARD.decode(preupload_payload(&files, Some("*.bin"))["files"][1]["sample"].as_str().unwrap()).unwrap();
        assert_eq!(sample.len(), SAMPLE_LEN);
        assert_eq!(preupload_payload(&files, Some("*.bin"))["gitIgnore"], "*.bin");
    }

    #[test]
    fn preupload_reply_parsing() {
        let reply = json!({"files": [
            {"path": "a", "uploadMode": "lfs", "shouldIgnore": false},
            {"path": "b", "uploadMode": "regular", "shouldIgnore": true, "oid": "abc"}]});
        let got = parse_preupload(&reply).unwrap();
        assert_eq!(got[0], PreuploadInfo { path: "a".into(), mode: UploadMode::Lfs, should_ignore: false, oid: None });
        assert_eq!(got[1].oid.as_deref(), Some("abc"));
        assert!(got[1].should_ignore);
        assert!(parse_preupload(&json!({"files": [{"path": "a", "uploadMode": "xet"}]})).is_err());
        assert!(parse_preupload(&json!({})).is_err());
    }

    #[test]
    fn commit_payload_lines() {
        let d = folder();
        let mut files = list_folder(d.path(), None).unwrap();
        files[1].mode = Some(UploadMode::Lfs);
        files[1].sha256().unwrap();
        files[2].mode = Some(UploadMode::Regular);
        files[3].mode = Some(UploadMode::Regular);
        files[3].should_ignore = true;
        let body = commit_payload("Upload", "", &files[1..]).unwrap();
        let lines: Vec<Value> =
            String::from_utf8(body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "header, lfsFile, file (the ignored file is left out)");
        assert_eq!(lines[0], json!({"key": "header", "value": {"summary": "Upload", "description": ""}}));
        assert_eq!(lines[1]["key"], "lfsFile");
        assert_eq!(lines[1]["value"]["oid"].as_str().unwrap().len(), 64);
        assert_eq!(lines[1]["value"]["size"], 600);
        assert_eq!(lines[1]["value"]["algo"], "sha256");
        assert_eq!(lines[2], json!({"key": "file", "value": {"content": "eA==", "path": "a.txt", "encoding": "base64"}}));
        files[0].mode = None;
        assert!(commit_payload("m", "", &files[..1]).is_err());
    }
}
