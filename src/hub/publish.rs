//! `[hub]` in a recipe: rank 0's uploads of a run — the token check before any training, each
//! checkpoint with `push = "checkpoints"`, and `final/` at the end (docs/hub.md).
//!
//! A finished upload of `final/` is recorded in `<run.dir>/hub.json` (repo, revision, commit):
//! a sweep's rerun pushes a finished trial whose upload failed and skips one already pushed.
//! Uploads run in the coordinator's checkpoint phase: the other ranks may wait for them
//! without the launcher taking the job for stalled.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::{HubConfig, PushWhen, Recipe};
use crate::error::{Error, Result};
use crate::hub::{CommitInfo, Hub, RepoId, UploadOptions};
use crate::sweep::template::{self, Scope};

/// The record of the last successful upload of `final/`, in the run directory.
pub const RECORD: &str = "hub.json";

/// Where a run uploads, with a Hub whose token can write there.
pub struct Publisher {
    hub: Hub,
    pub repo: RepoId,
    cfg: HubConfig,
}

/// The repo id of `cfg.repo` rendered for `scope` (see [`template::render`]).
pub fn render_repo(cfg: &HubConfig, scope: &Scope) -> Result<RepoId> {
    let id = template::render(&cfg.repo, scope).map_err(|msg| Error::Input(format!("hub.repo {:?}: {msg}", cfg.repo)))?;
    RepoId::parse(&id).map_err(|e| Error::Input(format!("hub.repo {:?} gives {id:?}: {e}", cfg.repo)))
}

/// The repo id of `recipe`'s `[hub] repo`; `{name}` is the run directory's name (a sweep's
/// trial name: the sweep renders its trials' repos itself, with the grid's values as typed).
pub fn repo_of(recipe: &Recipe, cfg: &HubConfig) -> Result<RepoId> {
    let name = recipe.run.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    render_repo(cfg, &Scope::new(recipe, &[]).with_name(&name))
}

impl Publisher {
    /// Rank 0, before any training: the repo id and a token that can write to its namespace,
    /// else one clear error (exit 2). `None` without `[hub]`.
    pub fn prepare(recipe: &Recipe) -> Result<Option<Publisher>> {
        let Some(cfg) = recipe.hub.clone() else { return Ok(None) };
        let repo = repo_of(recipe, &cfg)?;
        let hub = Hub::from_env()?;
        let who = hub.check_write()?;
        if let Some(ns) = repo.namespace.as_ref().filter(|ns| **ns != who.name && !who.orgs.contains(ns)) {
            let orgs = if who.orgs.is_empty() { "none".to_string() } else { who.orgs.join(", ") };
            return Err(Error::HubAuth(format!(
                "hub.repo {repo}: the token's user '{}' cannot write to namespace '{ns}' (its organisations: {orgs})",
                who.name
            )));
        }
        let repo = repo.with_namespace(&who.name);
        let what = match cfg.push {
            PushWhen::End => "final/ at the end",
            PushWhen::Checkpoints => "each checkpoint, then final/",
        };
        tracing::info!(repo = %repo, endpoint = hub.endpoint(), user = %who.name, "[hub]: rank 0 pushes {what}");
        Ok(Some(Publisher { hub, repo, cfg }))
    }

    fn options(&self, message: String, path_in_repo: Option<String>) -> UploadOptions {
        UploadOptions { private: self.cfg.private, revision: Some(self.cfg.revision.clone()), commit_message: Some(message), path_in_repo }
    }

    /// With `push = "checkpoints"`: checkpoint `dir` of step `step` into its folder of the
    /// repo. A failed upload is a warning: training goes on, and `final/` is pushed at the end.
    pub fn checkpoint(&self, dir: &Path, step: u64) {
        if self.cfg.push != PushWhen::Checkpoints {
            return;
        }
        let folder = self.cfg.checkpoint_folder.replace("{step}", &step.to_string());
        let opts = self.options(format!("rankforge: checkpoint at step {step}"), Some(folder.clone()));
        match self.hub.push(dir, &self.repo, &opts) {
            Ok(c) => tracing::info!(step, repo = %self.repo, folder, commit = %c.commit_url, "checkpoint pushed"),
            Err(e) => tracing::warn!(step, repo = %self.repo, "checkpoint not pushed (training goes on): {e}"),
        }
    }

    /// `final/` of `run_dir` to the repo's root; records the commit in `<run.dir>/hub.json`.
    /// A failure (after the client's retries) leaves `final/` as it is and says how to push
    /// it later.
    pub fn finish(&self, run_dir: &Path, step: u64, task: &str) -> Result<CommitInfo> {
        let final_dir = run_dir.join("final");
        let message = self.cfg.commit_message.clone().unwrap_or_else(|| format!("rankforge: {task} model, step {step}"));
        let info = self.hub.push(&final_dir, &self.repo, &self.options(message, None)).inspect_err(|_| {
            let revision = if self.cfg.revision == "main" { String::new() } else { format!(" --revision {}", self.cfg.revision) };
            tracing::error!(
                "{} is complete and intact; push it later with `rankforge push --model {} --repo {}{revision}` (or rerun)",
                final_dir.display(),
                final_dir.display(),
                self.repo
            );
        })?;
        let record = json!({
            "repo": self.repo.to_string(), "revision": self.cfg.revision, "commit": info.oid,
            "commit_url": info.commit_url, "endpoint": self.hub.endpoint(), "step": step,
        });
        crate::fsutil::write_json_atomic(&run_dir.join(RECORD), &record)?;
        tracing::info!(repo = %self.repo, commit = %info.commit_url, files = info.files_committed, "final/ pushed");
        Ok(info)
    }
}

/// Whether `run_dir`'s `final/` went to `repo` at `revision` (its `hub.json` says so).
pub fn pushed(run_dir: &Path, repo: &str, revision: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(run_dir.join(RECORD)) else { return false };
    let Ok(v) = serde_json::from_str::<Value>(&text) else { return false };
    let same_repo = v["repo"].as_str().is_some_and(|r| r == repo || r.rsplit('/').next() == Some(repo));
    same_repo && v["revision"].as_str() == Some(revision)
}
