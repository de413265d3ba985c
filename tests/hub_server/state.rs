//! The test Hub's in-memory state: repos, branches as lists of commits (each a full tree),
//! the LFS object store, and the git/LFS object ids the Hub reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha1::Digest as _;

use super::{HubOptions, Recorded};

/// One file of a tree: its bytes (a regular git blob) or an LFS pointer into the object store.
#[derive(Clone, Debug)]
pub enum Entry {
    Regular(Vec<u8>),
    Lfs { oid: String, size: u64 },
}

impl Entry {
    pub fn size(&self) -> u64 {
        match self {
            Entry::Regular(b) => b.len() as u64,
            Entry::Lfs { size, .. } => *size,
        }
    }

    /// The git blob id: of the content, or of the pointer file for LFS entries.
    pub fn blob_id(&self) -> String {
        match self {
            Entry::Regular(b) => git_blob_oid(b),
            Entry::Lfs { oid, size } => git_blob_oid(lfs_pointer(oid, *size).as_bytes()),
        }
    }

    /// The oid preupload reports for an existing file: what the client compares its local
    /// file with (git blob sha1 for regular files, sha256 for LFS files).
    pub fn preupload_oid(&self) -> String {
        match self {
            Entry::Regular(b) => git_blob_oid(b),
            Entry::Lfs { oid, .. } => oid.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Commit {
    pub oid: String,
    pub summary: String,
    pub tree: BTreeMap<String, Entry>,
}

#[derive(Default)]
pub struct Repo {
    pub private: bool,
    /// Branch name -> its commits, oldest first (a new repo's `main` has none).
    pub branches: BTreeMap<String, Vec<Commit>>,
}

impl Repo {
    pub fn new(private: bool) -> Repo {
        let mut branches = BTreeMap::new();
        branches.insert("main".to_string(), Vec::new());
        Repo { private, branches }
    }

    /// A revision (branch name or commit oid) -> `Ok(Some(commit))`, `Ok(None)` for a branch
    /// without commits, `Err(())` when the revision does not exist.
    pub fn lookup(&self, rev: &str) -> Result<Option<&Commit>, ()> {
        if let Some(commits) = self.branches.get(rev) {
            return Ok(commits.last());
        }
        self.branches.values().flatten().find(|c| c.oid == rev).map(Some).ok_or(())
    }

    /// The commits of `rev` up to and including it (for a new branch's history).
    pub fn history(&self, rev: &str) -> Option<Vec<Commit>> {
        if let Some(commits) = self.branches.get(rev) {
            return Some(commits.clone());
        }
        for commits in self.branches.values() {
            if let Some(i) = commits.iter().position(|c| c.oid == rev) {
                return Some(commits[..=i].to_vec());
            }
        }
        None
    }
}

/// A multipart LFS upload announced by a batch reply, waiting for its parts.
pub struct Multipart {
    pub size: u64,
    pub chunk: u64,
    /// Part number -> (etag, bytes).
    pub parts: BTreeMap<u64, (String, Vec<u8>)>,
}

/// A pending `fail_next` injection.
pub struct Failure {
    pub path_contains: String,
    pub status: u16,
    pub left: usize,
}

pub struct State {
    pub endpoint: String,
    pub opts: HubOptions,
    pub repos: HashMap<String, Repo>,
    /// LFS objects by sha256 hex.
    pub lfs: HashMap<String, Vec<u8>>,
    /// Oids whose bytes arrived, in order.
    pub received: Vec<String>,
    pub multipart: HashMap<String, Multipart>,
    pub log: Vec<Recorded>,
    pub failures: Vec<Failure>,
    pub commit_counter: u64,
}

impl State {
    pub fn new(endpoint: String, opts: HubOptions) -> State {
        State {
            endpoint,
            opts,
            repos: HashMap::new(),
            lfs: HashMap::new(),
            received: Vec::new(),
            multipart: HashMap::new(),
            log: Vec::new(),
            failures: Vec::new(),
            commit_counter: 0,
        }
    }

    /// Takes one pending failure matching `path`, if any.
    pub fn take_failure(&mut self, path: &str) -> Option<u16> {
        let f = self.failures.iter_mut().find(|f| f.left > 0 && path.contains(&f.path_contains))?;
        f.left -= 1;
        Some(f.status)
    }

    pub fn lfs_threshold(&self) -> u64 {
        self.opts.lfs_threshold.unwrap_or(10 * 1024 * 1024)
    }

    /// The upload mode the Hub answers in preupload for a file of `size` bytes at `path`.
    pub fn upload_mode(&self, path: &str, size: u64) -> &'static str {
        if size > 0 && (size >= self.lfs_threshold() || lfs_pattern(path)) {
            "lfs"
        } else {
            "regular"
        }
    }

    /// A fresh commit oid (40 hex digits) for a commit on top of `parent`.
    pub fn next_commit_oid(&mut self, parent: Option<&str>, summary: &str) -> String {
        self.commit_counter += 1;
        let mut h = sha1::Sha1::new();
        h.update(format!("commit {} {} {summary}", self.commit_counter, parent.unwrap_or("")));
        hex(&h.finalize())
    }

    /// The bytes of a tree entry (LFS entries from the object store).
    pub fn content(&self, entry: &Entry) -> Vec<u8> {
        match entry {
            Entry::Regular(b) => b.clone(),
            Entry::Lfs { oid, .. } => self.lfs.get(oid).cloned().unwrap_or_default(),
        }
    }
}

/// The Hub's default `.gitattributes` LFS patterns (by file name).
pub fn lfs_pattern(path: &str) -> bool {
    const EXT: &[&str] = &[
        "safetensors",
        "bin",
        "pt",
        "pth",
        "ckpt",
        "h5",
        "msgpack",
        "onnx",
        "npy",
        "npz",
        "pkl",
        "model",
        "zip",
        "gz",
        "tar",
        "parquet",
        "arrow",
    ];
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.contains("tfevents") {
        return true;
    }
    match name.rsplit_once('.') {
        Some((_, ext)) => EXT.contains(&ext),
        None => false,
    }
}

pub fn git_blob_oid(content: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", content.len()));
    h.update(content);
    hex(&h.finalize())
}

pub fn sha256_hex(content: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(content))
}

pub fn sha1_hex(content: &[u8]) -> String {
    hex(&sha1::Sha1::digest(content))
}

pub fn lfs_pointer(oid: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The folders containing the files of `tree` (every ancestor of every path).
pub fn folders(tree: &BTreeMap<String, Entry>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for path in tree.keys() {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            out.insert(path[..end].to_string());
            end += 1;
        }
    }
    out
}
