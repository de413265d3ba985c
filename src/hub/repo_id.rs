//! Repository ids, validated exactly as `huggingface_hub.utils.validate_repo_id` does.
//!
//! The client's rules (huggingface_hub 2.4.0, `utils/_validators.py`), in its order:
//! 1. at most one `/` (`"repo_name"` or `"namespace/repo_name"`);
//! 2. the whole id matches `(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b` with ASCII `\w`: each part is
//!    1 to 96 characters of `[A-Za-z0-9_.-]` and starts and ends with `[A-Za-z0-9_]` (the word
//!    boundaries), so no part starts or ends with `-` or `.`;
//! 3. no `--` and no `..` anywhere;
//! 4. it does not end with `.git`.
//!
//! The messages are the client's.

use std::fmt;

use crate::error::{Error, Result};

/// Longest namespace or repository name the client's regex accepts.
const MAX_PART_LEN: usize = 96;

/// A model repository id: `name` or `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    /// The user or organisation; `None` for a bare `name` (the token's user, see
    /// [`RepoId::with_namespace`]).
    pub namespace: Option<String>,
    pub name: String,
}

impl RepoId {
    /// Parses and validates `id` as the Python client does.
    pub fn parse(id: &str) -> Result<RepoId> {
        validate_repo_id(id).map_err(|msg| Error::Input(format!("repo id {msg}")))?;
        Ok(match id.split_once('/') {
            Some((ns, name)) => RepoId { namespace: Some(ns.to_string()), name: name.to_string() },
            None => RepoId { namespace: None, name: id.to_string() },
        })
    }

    /// The id with `user` as namespace when it has none (what the Hub does with a bare name:
    /// the repo is created under the token's user).
    pub fn with_namespace(&self, user: &str) -> RepoId {
        RepoId { namespace: Some(self.namespace.clone().unwrap_or_else(|| user.to_string())), name: self.name.clone() }
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// `huggingface_hub.utils.validate_repo_id`: `Err` carries the client's message.
pub fn validate_repo_id(repo_id: &str) -> std::result::Result<(), String> {
    if repo_id.matches('/').count() > 1 {
        return Err(format!(
            "must be in the form 'repo_name' or 'namespace/repo_name': '{repo_id}'. Use `repo_type` argument if needed."
        ));
    }
    let parts_ok = match repo_id.split_once('/') {
        Some((ns, name)) => part_matches(ns) && part_matches(name),
        None => part_matches(repo_id),
    };
    if !parts_ok {
        return Err(format!(
            "must use alphanumeric chars, '-', '_' or '.'. The name cannot start or end with '-' or '.' and the maximum length is 96: '{repo_id}'."
        ));
    }
    if repo_id.contains("--") || repo_id.contains("..") {
        return Err(format!("cannot have -- or .. in repo_id: '{repo_id}'."));
    }
    if repo_id.ends_with(".git") {
        return Err(format!("cannot end by '.git': '{repo_id}'."));
    }
    Ok(())
}

/// `\b[\w\-.]{1,96}\b` matched over a whole namespace or name (ASCII `\w`).
fn part_matches(part: &str) -> bool {
    let bytes = part.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= MAX_PART_LEN
                && word(first)
                && word(last)
                && bytes.iter().all(|&b| word(b) || b == b'-' || b == b'.')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// huggingface_hub's tests/test_utils_validators.py, TestRepoIdValidator.VALID_VALUES.
    #[test]
    fn accepts_the_clients_valid_ids() {
        for id in ["123", "foo", "foo/bar", "Foo-BAR_foo.bar123"] {
            assert_eq!(validate_repo_id(id), Ok(()), "{id}");
        }
    }

    /// TestRepoIdValidator.NOT_VALID_VALUES (all but the `Path`, which Rust's types exclude).
    #[test]
    fn refuses_the_clients_invalid_ids() {
        let too_long = "a".repeat(100);
        for id in [too_long.as_str(), "datasets/foo/bar", ".repo_id", "repo_id.", "foo--bar", "foo..bar", "foo.git"] {
            assert!(validate_repo_id(id).is_err(), "{id} must not be valid");
        }
    }

    /// More cases, each checked against huggingface_hub 2.4.0's validate_repo_id in the venv.
    #[test]
    fn agrees_with_the_client_on_edge_cases() {
        let ns96 = format!("{}/x", "n".repeat(96));
        let ns97 = format!("{}/x", "n".repeat(97));
        let ok = ["user/dpo_model_lr5e-05_bs16_epoch1", "_/_", "a/b", "user/a.b-c_d", ns96.as_str(), "org/x.gitx"];
        for id in ok {
            assert_eq!(validate_repo_id(id), Ok(()), "{id}");
        }
        let bad = [
            "", "/", "user/", "/name", "-user/name", "user-/name", "user/-name", "user/name-", "user/.name",
            "user/na me", "user/café", "user/name!", "us..er/name", "user/a--b", "user/model.git", ns97.as_str(),
        ];
        for id in bad {
            assert!(validate_repo_id(id).is_err(), "{id:?} must not be valid");
        }
    }

    #[test]
    fn messages_are_the_clients() {
        assert_eq!(validate_repo_id("foo..bar").unwrap_err(), "cannot have -- or .. in repo_id: 'foo..bar'.");
        assert!(validate_repo_id("a/b/c").unwrap_err().starts_with("must be in the form 'repo_name' or 'namespace/repo_name'"));
        assert_eq!(validate_repo_id("foo.git").unwrap_err(), "cannot end by '.git': 'foo.git'.");
    }

    #[test]
    fn parse_splits_and_fills_the_namespace() {
        let id = RepoId::parse("user/m").unwrap();
        assert_eq!((id.namespace.as_deref(), id.name.as_str()), (Some("user"), "m"));
        let bare = RepoId::parse("m").unwrap();
        assert_eq!(bare.namespace, None);
        assert_eq!(bare.with_namespace("me").to_string(), "me/m");
        assert_eq!(id.with_namespace("me").to_string(), "user/m");
        let err = RepoId::parse("user/-m").unwrap_err().to_string();
        assert!(err.starts_with("repo id must use alphanumeric chars"), "{err}");
    }
}
