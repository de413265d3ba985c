//! The seeds' workflow end to end (issue 15): the shipped grid recipe (configs/dpo_sweep_gpu.toml)
//! on the tiny GPT-2, a 2 × 2 grid of DPO (`train.lr` × `train.global_batch_size`, one epoch) on
//! two launched ranks, every trial pushed by rank 0 to the test Hub (tests/hub_server) as
//! `dpo_model_lr{lr}_bs{bs}_epoch{epoch}` with its card; a sweep stopped mid-trial and rerun
//! ends as the uninterrupted one. Also `[hub]` on a plain `train`: the token checked before any
//! step, each checkpoint pushed with `push = "checkpoints"`, a Hub down at the end (exit 69,
//! `final/` intact, the rerun pushes), and a repo id the Hub would refuse (exit 2, nothing run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::hub_server::{TestHub, READ_TOKEN, TOKEN};
use crate::sweep::{check, figures, rows};

/// The trials of the seed grid, in order (the last axis varies fastest): the names Python's
/// f-strings give the same values.
const NAMES: [&str; 4] = ["dpo_model_lr5e-05_bs8_epoch1", "dpo_model_lr5e-05_bs4_epoch1", "dpo_model_lr0.0001_bs8_epoch1", "dpo_model_lr0.0001_bs4_epoch1"];

/// `rankforge` (or the launcher, with `launch`) with the Hub's environment: `endpoint`, `token`
/// (none: no token anywhere), a private HF_HOME, millisecond back-off.
fn hub_cmd(program: PathBuf, endpoint: &str, token: Option<&str>, home: &Path) -> Command {
    std::fs::create_dir_all(home).unwrap();
    let mut c = Command::new(program);
    c.env("RANKFORGE_LOG", "info")
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env("RANKFORGE_HUB_RETRY_BASE_MS", "5")
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("RANKFORGE_JOB_TOKEN");
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c
}

/// The seed sweep's arguments after `sweep`: the shipped recipe on the tiny model, the 2 × 2
/// grid, pushed as `namespace/{name}`.
fn seed_args(base: &Path, namespace: &str) -> Vec<String> {
    let d = crate::dpo_train::dir();
    let model = fixture().run.join("final");
    let sets = [
        format!("model.path={:?}", model.display().to_string()),
        format!("data.train={:?}", d.join("kjv_dpo.jsonl").display().to_string()),
        format!("data.val={:?}", d.join("kjv_dpo_val.jsonl").display().to_string()),
        format!("run.dir={:?}", base.display().to_string()),
        "train.device=\"cpu\"".into(),
        "train.micro_batch_size=2".into(),
        "train.warmup_steps=0".into(),
        "data.max_length=48".into(),
        "eval.max_batches=1".into(),
        "eval.every_steps=4".into(),
        "checkpoint.every_steps=2".into(),
        "lora.target_modules=[\"c_attn\"]".into(),
        format!("hub.repo=\"{namespace}/{{name}}\""),
    ];
    let mut a = vec!["sweep".to_string(), "--config".into(), root().join("configs/dpo_sweep_gpu.toml").display().to_string()];
    for s in sets {
        a.extend(["--set".to_string(), s]);
    }
    for g in ["train.lr=5e-05,0.0001", "train.global_batch_size=8,4", "train.epochs=1"] {
        a.extend(["--grid".to_string(), g.into()]);
    }
    a.extend(["--name".to_string(), "dpo_model_lr{lr}_bs{bs}_epoch{epoch}".into()]);
    a
}

/// The seed sweep under `rankforge-launch --nproc-per-node 2` (`flags` for the launcher).
fn launch_seed(hub: &TestHub, base: &Path, namespace: &str, flags: &[&str]) -> Command {
    let logs = base.with_extension("logs");
    let mut c = hub_cmd(bin().with_file_name("rankforge-launch"), &hub.endpoint, Some(TOKEN), &base.with_extension("hf_home"));
    c.args(["--nproc-per-node", "2", "--log-dir", logs.to_str().unwrap()]).args(flags).arg("--").args(seed_args(base, namespace));
    c
}

/// Waits (up to 300 s) until trial 1 is finished and trial 2 has a checkpoint.
fn wait_inside_trial_2(base: &Path) {
    let second = base.join(NAMES[1]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(base.join(NAMES[0]).join("final").exists() && rankforge::checkpoint::list(&second).is_ok_and(|l| !l.is_empty())) {
        assert!(Instant::now() < deadline, "timed out waiting for trial 1's final/ and a checkpoint of trial 2");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `base`'s sweep ended as the uninterrupted seed sweep: the same summary figures and losses,
/// the same adapters on the Hub under `namespace`, each trial pushed once.
fn same_as_the_seed(hub: &TestHub, base: &Path, namespace: &str) {
    let s = seed();
    assert_eq!(rows(base).iter().map(figures).collect::<Vec<_>>(), rows(&s.base).iter().map(figures).collect::<Vec<_>>(), "as the uninterrupted sweep");
    for name in NAMES {
        assert_eq!(losses(&base.join(name)), losses(&s.base.join(name)), "{name}: train losses");
        let (now, then) = (hub.files(&format!("{namespace}/{name}"), "main"), s.hub.files(&format!("user/{name}"), "main"));
        assert!(now["adapter_model.safetensors"] == then["adapter_model.safetensors"], "{name}: the same adapter as the uninterrupted trial");
        assert_eq!(hub.commits(&format!("{namespace}/{name}"), "main").len(), 1, "{name}: pushed once (a finished trial is not pushed again)");
    }
}

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot(dir).into_iter().map(|(p, bytes)| (p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().replace('\\', "/"), bytes)).collect()
}

/// The YAML front matter of a card, parsed by huggingface_hub's own ModelCard.
fn card_data(readme: &[u8], dir: &Path) -> Value {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("README.md");
    std::fs::write(&path, readme).unwrap();
    let code = "import json, sys\nfrom huggingface_hub import ModelCard\nc = ModelCard.load(sys.argv[1])\nprint(json.dumps(c.data.to_dict()))";
    let out = Command::new(python()).args(["-c", code, path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The uninterrupted seed sweep, pushed as `user/...`: the tests share it.
struct Seed {
    hub: TestHub,
    base: PathBuf,
}

fn seed() -> &'static Seed {
    static SEED: OnceLock<Seed> = OnceLock::new();
    SEED.get_or_init(|| {
        let hub = TestHub::start();
        let base = scratch("sweep-hub-seed").join("sweep");
        let out = launch_seed(&hub, &base, "user", &[]).output().unwrap();
        check(&out, "the seed sweep on 2 ranks");
        Seed { hub, base }
    })
}

#[test]
fn seed_dpo_grid_on_two_ranks_pushes_four_repos_with_cards_and_names_the_best() {
    let s = seed();
    let rows = rows(&s.base);
    assert_eq!(rows.iter().map(|r| r["name"].as_str().unwrap()).collect::<Vec<_>>(), NAMES);
    for (row, name) in rows.iter().zip(NAMES) {
        assert_eq!(row["status"], "ok", "{row}");
        let run = s.base.join(name);
        let repo = format!("user/{name}");
        assert!(s.hub.repo_exists(&repo) && s.hub.is_private(&repo), "{repo}: created private, as the recipe says");
        // What the Hub holds is final/, byte for byte: the adapter, the merged model, the card.
        let local = files(&run.join("final"));
        let remote = s.hub.files(&repo, "main");
        assert_eq!(remote.keys().collect::<Vec<_>>(), local.keys().collect::<Vec<_>>(), "{repo}");
        assert!(remote == local, "{repo}: the pushed files equal final/");
        assert!(local.contains_key("adapter_model.safetensors") && local.contains_key("merged/model.safetensors"), "{repo}");
        let data = card_data(&remote["README.md"], &s.base.with_extension("cards").join(name));
        assert_eq!(data["library_name"], "peft", "{data}");
        let tags: Vec<&str> = data["tags"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(tags.contains(&"rankforge") && tags.contains(&"dpo") && tags.contains(&"lora"), "{data}");
        assert_eq!(data["model-index"][0]["name"], name, "{data}");
        let record: Value = serde_json::from_str(&std::fs::read_to_string(run.join("hub.json")).unwrap()).unwrap();
        assert_eq!(record["repo"], repo.as_str());
        assert_eq!(s.hub.commits(&repo, "main").len(), 1, "{repo}: one commit");
    }
    // The weights went through the LFS batch API, not inline in the commit.
    assert!(s.hub.lfs_objects_received().len() >= 8, "adapter and merged weights of four trials by LFS");
    // The best trial by val_loss (min) is marked in the table.
    let val = |r: &Value| r["metrics"]["val_loss"].as_f64().unwrap();
    let best = rows.iter().min_by(|a, b| val(a).total_cmp(&val(b))).unwrap()["name"].as_str().unwrap();
    let md = std::fs::read_to_string(s.base.join("sweep.md")).unwrap();
    let marked: Vec<&str> = md.lines().filter(|l| l.starts_with("| * |")).collect();
    assert_eq!(marked.len(), 1, "{md}");
    assert!(marked[0].contains(best), "best {best}:\n{md}");
}

#[test]
fn a_stopped_seed_sweep_reruns_to_the_uninterrupted_results_and_pushes_each_trial_once() {
    let hub = &seed().hub;
    let base = scratch("sweep-hub-stop").join("sweep");
    let child = launch_seed(hub, &base, "org", &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_inside_trial_2(&base);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(rankforge_proto::EXIT_STOPPED), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!base.join(NAMES[1]).join("final").exists(), "stopped inside trial 2");
    assert!(hub.repo_exists(&format!("org/{}", NAMES[0])) && !hub.repo_exists(&format!("org/{}", NAMES[1])));
    let out = launch_seed(hub, &base, "org", &[]).output().unwrap();
    check(&out, "the rerun");
    same_as_the_seed(hub, &base, "org");
}

/// A rank killed inside trial 2: the launcher restarts the job, whose sweep skips trial 1 (and
/// its push), resumes trial 2 from its checkpoint and ends as the uninterrupted sweep.
#[test]
fn a_rank_killed_mid_trial_restarts_the_sweep_which_ends_as_the_uninterrupted_one() {
    let hub = TestHub::start();
    let base = scratch("sweep-hub-kill").join("sweep");
    let child = launch_seed(&hub, &base, "user", &["--max-restarts", "1", "--grace-period", "1"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_inside_trial_2(&base);
    let dir = base.parent().unwrap();
    unsafe { libc::kill(crate::dist::rank_pid_of(dir, 1, "sweep"), libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("restart 1 of 1, root cause: rank 1 on") && err.contains("killed by SIGKILL"), "{err}");
    same_as_the_seed(&hub, &base, "user");
}

/// A tiny GPT run with `[hub]` (`extra` appended to the recipe).
fn hub_recipe(dir: &Path, run: &Path, extra: &str) -> PathBuf {
    let f = fixture();
    let r = tiny_recipe(dir, &f.corpus, &f.tokenizer, run);
    let mut text = std::fs::read_to_string(&r).unwrap();
    text.push_str(extra);
    let path = dir.join(format!("{}.toml", run.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

fn train(hub_endpoint: &str, token: Option<&str>, recipe: &Path, sets: &[&str]) -> Output {
    let mut c = hub_cmd(bin(), hub_endpoint, token, &recipe.with_extension("hf_home"));
    c.args(["train", "--config", recipe.to_str().unwrap()]);
    for s in sets {
        c.args(["--set", s]);
    }
    c.output().unwrap()
}

/// The one `error:` line of a run that failed with exit `code`.
fn error_line(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "expected exit {code}:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
    lines[0].to_string()
}

#[test]
fn train_with_hub_checks_the_token_first_pushes_checkpoints_and_final_and_survives_a_dead_hub() {
    let hub = TestHub::start();
    let dir = scratch("train-hub");
    let hub_section = "[hub]\nrepo = \"user/{name}-lr{lr}\"\npush = \"checkpoints\"\n";
    // A read-only or missing token: one line, exit 2, before any step.
    for token in [Some(READ_TOKEN), None] {
        let run = dir.join(format!("refused-{}", token.is_some()));
        let r = hub_recipe(&dir, &run, hub_section);
        let line = error_line(&train(&hub.endpoint, token, &r, &["train.max_steps=4"]), 2);
        assert!(line.contains("token"), "{line}");
        assert!(!run.join("metrics.jsonl").exists() && !run.join("checkpoints").exists(), "nothing trained: {line}");
    }
    // Checkpoints at steps 2 and 4 into their folders, then final/ at the root.
    let run = dir.join("pushed");
    let r = hub_recipe(&dir, &run, hub_section);
    let lr = rankforge::config::Recipe::load(&r, &[]).unwrap().train.lr;
    let repo = format!("user/pushed-lr{}", rankforge::sweep::template::python_float(lr));
    check(&train(&hub.endpoint, Some(TOKEN), &r, &["train.max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=3"]), "train with [hub]");
    let remote = hub.files(&repo, "main");
    for step in [2, 4] {
        let local = files(&run.join(format!("checkpoints/step_{step:08}")));
        for (path, bytes) in &local {
            assert!(remote.get(&format!("checkpoint-{step}/{path}")) == Some(bytes), "{repo}: checkpoint-{step}/{path}");
        }
    }
    for (path, bytes) in files(&run.join("final")) {
        assert!(remote.get(&path) == Some(&bytes), "{repo}: {path} of final/");
    }
    assert_eq!(hub.commits(&repo, "main").len(), 3, "two checkpoints and final/");

    // The Hub down at the end: exit 69 after the retries, final/ complete; the rerun pushes it.
    let run = dir.join("down");
    let r = hub_recipe(&dir, &run, "[hub]\nrepo = \"user/down\"\n");
    hub.fail_next("/preupload/", 503, 1 + rankforge::hub::MAX_RETRIES as usize); // every attempt
    let line = error_line(&train(&hub.endpoint, Some(TOKEN), &r, &["train.max_steps=2"]), rankforge_proto::EXIT_HUB_UNAVAILABLE);
    assert!(line.contains("503") || line.contains("preupload"), "{line}");
    let before = files(&run.join("final"));
    assert!(before.contains_key("model.safetensors") && !run.join("hub.json").exists());
    check(&train(&hub.endpoint, Some(TOKEN), &r, &["train.max_steps=2"]), "the rerun pushes");
    assert!(hub.files("user/down", "main")["model.safetensors"] == before["model.safetensors"]);
    assert_eq!(files(&run.join("final"))["model.safetensors"], before["model.safetensors"], "final/ untouched");
}

#[test]
fn a_hub_repo_the_hub_would_refuse_is_one_line_and_exit_2_before_anything_runs() {
    let hub = TestHub::start();
    let dir = scratch("sweep-hub-bad");
    let base = dir.join("sweep");
    for (repo, expect) in [("user/{name}--x", "--"), ("user/{nam}", "{nam}"), ("a/b/{name}", "namespace/repo_name"), ("user/same", "both push to")] {
        let r = hub_recipe(&dir, &base, &format!("[hub]\nrepo = \"{repo}\"\n"));
        let mut c = hub_cmd(bin(), &hub.endpoint, Some(TOKEN), &dir.join("hf_home"));
        c.args(["sweep", "--config", r.to_str().unwrap(), "--grid", "train.lr=3e-3,1e-3", "--set", "train.max_steps=2"]);
        let line = error_line(&c.output().unwrap(), 2);
        assert!(line.contains(expect) && line.contains("hub.repo"), "{repo}: {line}");
        assert!(!base.exists(), "{repo}: nothing ran");
    }
    assert!(hub.requests().is_empty(), "refused before the Hub is asked");
}
