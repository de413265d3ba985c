//! Training: the loss falls, resume is exact, checkpoints are pruned and complete.

use std::process::Command;

use crate::common::*;

#[test]
fn loss_falls_and_run_dir_is_complete() {
    let f = fixture();
    let losses = losses(&f.run);
    assert_eq!(losses.len(), 40);
    let first = losses[0];
    let last5: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    // A 1000-token vocabulary starts near ln(1024) ≈ 6.9; 40 steps must take off at least 1 nat.
    assert!((first - (1024f64).ln()).abs() < 0.5, "initial loss {first}");
    assert!(last5 < first - 1.0, "loss did not fall: first {first}, last five {last5}");
    let metrics = std::fs::read_to_string(f.run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for key in ["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"] {
        assert!(rows[0].get(key).is_some(), "metrics row lacks {key}: {}", rows[0]);
    }
    let evals: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("val_loss").is_some()).collect();
    assert_eq!(evals.len(), 2, "eval every 20 steps");
    let (vl, vp) = (evals[1]["val_loss"].as_f64().unwrap(), evals[1]["val_ppl"].as_f64().unwrap());
    assert!((vl.exp() - vp).abs() < 1e-6 * vp);
    assert_eq!(rows.iter().filter(|r| r.get("loss").is_some()).last().unwrap()["tokens"], 40 * 8 * 64);
    // keep_last = 2: both checkpoints kept, each complete and verified.
    let cks = rankforge::checkpoint::list(&f.run).unwrap();
    assert_eq!(cks.iter().map(|c| c.0).collect::<Vec<_>>(), vec![20, 40]);
    for (_, dir) in &cks {
        rankforge::checkpoint::verify(dir).unwrap();
    }
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"] {
        assert!(f.run.join("final").join(file).exists(), "final/{file} missing");
    }
    let recipe = std::fs::read_to_string(f.run.join("recipe.toml")).unwrap();
    assert!(recipe.contains("max_steps = 40"), "resolved recipe written");
}

/// 20 steps, then a resume to 40, gives the same 40 losses and weights as 40 straight — with
/// dropout on, so the RNG stream must be restored too.
#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let f = fixture();
    let dir = scratch("resume");
    let straight = dir.join("straight");
    let split = dir.join("split");
    let r1 = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &straight);
    let r2 = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &split);
    let common = ["--set", "model.dropout=0.1", "--set", "train.lr_decay_steps=40", "--set", "checkpoint.every_steps=0"];
    let args = |r: &std::path::Path, extra: &[&'static str]| {
        let mut a = vec!["train".to_string(), "--config".into(), r.display().to_string()];
        a.extend(common.iter().chain(extra).map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    run(args(&r1, &[]));
    run(args(&r2, &["--set", "train.max_steps=20"]));
    assert_eq!(losses(&split).len(), 20);
    run(args(&r2, &[]));
    let (a, b) = (losses(&straight), losses(&split));
    assert_eq!(a.len(), 40);
    assert_eq!(a, b, "resumed losses differ from the uninterrupted run");
    let wa = rankforge::st::load(&straight.join("final/model.safetensors")).unwrap();
    let wb = rankforge::st::load(&split.join("final/model.safetensors")).unwrap();
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "weight {na} differs after resume");
    }
}

/// A crash after the last checkpoint leaves metrics rows past it; the resumed run replaces
/// them, and an explicit --resume picks an older checkpoint.
#[test]
fn resume_from_chosen_checkpoint_rewrites_later_metrics() {
    let f = fixture();
    let dir = scratch("resume-pick");
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    let r = recipe.to_str().unwrap();
    ok(&["train", "--config", r, "--set", "checkpoint.keep_last=3"]);
    let full = losses(&run);
    let ck20 = run.join("checkpoints/step_00000020");
    ok(&["train", "--config", r, "--set", "checkpoint.keep_last=3", "--resume", ck20.to_str().unwrap()]);
    assert_eq!(losses(&run), full, "resuming from step 20 re-trains 21..40 identically, without duplicate rows");
    // Nothing to do once the run is complete: no new rows, no error.
    ok(&["train", "--config", r, "--set", "checkpoint.keep_last=3"]);
    assert_eq!(losses(&run).len(), 40);
}

#[test]
fn damaged_newest_checkpoint_falls_back_to_previous() {
    let f = fixture();
    let dir = scratch("damaged");
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    let r = recipe.to_str().unwrap();
    ok(&["train", "--config", r, "--set", "train.max_steps=20", "--set", "checkpoint.every_steps=10", "--set", "train.lr_decay_steps=40"]);
    // Truncate the newest checkpoint's weights, as a full disk or a crash might.
    let newest = run.join("checkpoints/step_00000020/model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let out = rankforge(&["train", "--config", r, "--set", "train.max_steps=20", "--set", "checkpoint.every_steps=10", "--set", "train.lr_decay_steps=40"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipping damaged checkpoint") && err.contains("step_00000020"), "{err}");
    // It resumed from step 10 and redid 11..20.
    assert_eq!(losses(&run).len(), 20);
    rankforge::checkpoint::verify(&run.join("checkpoints/step_00000020")).unwrap();
}

/// `data.train` as a folder (files in sorted order, hidden ones skipped) and a separate
/// `data.val` file instead of a held-out fraction.
#[test]
fn folder_input_and_separate_validation_file() {
    let f = fixture();
    let dir = scratch("folder");
    let corpus = std::fs::read_to_string(&f.corpus).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("a.txt"), &corpus[..150_000]).unwrap();
    std::fs::write(data.join("sub/b.txt"), &corpus[150_000..300_000]).unwrap();
    std::fs::write(data.join(".hidden"), "not text \u{0}").unwrap();
    let val = dir.join("val.txt");
    std::fs::write(&val, &corpus[300_000..]).unwrap();
    let run = dir.join("run");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &run);
    let text = std::fs::read_to_string(&recipe).unwrap().replace("val_fraction = 0.01", &format!("val = {:?}", val.display().to_string()));
    std::fs::write(&recipe, text).unwrap();
    ok(&["train", "--config", recipe.to_str().unwrap(), "--set", &format!("data.train={:?}", data.display().to_string()), "--set", "train.max_steps=6"]);
    assert_eq!(losses(&run).len(), 6);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().any(|l| l.contains("val_loss")), "evaluated on data.val");
    // The token cache describes its sources: both files, in order, not the hidden one.
    let caches: Vec<_> = std::fs::read_dir(dir.join("cache/tokens")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    let sources: Vec<String> = caches
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .filter(|t| t.contains("a.txt"))
        .collect();
    assert_eq!(sources.len(), 1);
    let (a, b) = (sources[0].find("a.txt").unwrap(), sources[0].find("b.txt").unwrap());
    assert!(a < b && !sources[0].contains(".hidden"), "{}", sources[0]);
}

/// A disk that fills up during a save: the run stops with exit 74 (not retried by launchers),
/// the partial checkpoint is gone, the previous one is intact, and resuming from it finishes
/// exactly like the uninterrupted fixture run. The small disk is a 3 MB tmpfs in a private
/// mount namespace (`unshare -m`, root); one checkpoint of the tiny model takes 2.1 MB.
#[test]
fn a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_stops_with_exit_74() {
    let f = fixture();
    let dir = scratch("disk-full");
    if !Command::new("unshare").args(["-m", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: a_full_disk_during_a_save…: `unshare -m` is not permitted here (needs root)");
        return;
    }
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let copy = dir.join("copy");
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &small.join("run"));
    let script = format!(
        "mount -t tmpfs -o size=3m none '{small}' && '{bin}' train --config '{recipe}' --set checkpoint.every_steps=10; \
         code=$?; cp -a '{small}/run' '{copy}'; exit $code",
        small = small.display(),
        bin = bin().display(),
        recipe = recipe.display(),
        copy = copy.display()
    );
    let out = Command::new("unshare").args(["-m", "sh", "-c", &script]).env("RANKFORGE_LOG", "warn").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(rankforge::error::EXIT_NO_SPACE), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("disk full while writing checkpoint step_00000020") && err.contains("step_00000010, is intact"), "{err}");
    let cks = rankforge::checkpoint::list(&copy).unwrap();
    assert_eq!(cks.iter().map(|c| c.0).collect::<Vec<_>>(), vec![10]);
    rankforge::checkpoint::verify(&cks[0].1).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(copy.join("checkpoints")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // With space again, the same recipe resumes from step 10 and ends as the fixture run did.
    let resumed = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &copy);
    ok(&["train", "--config", resumed.to_str().unwrap()]);
    assert_eq!(losses(&copy), losses(&f.run));
    let (a, b) = (rankforge::st::load(&copy.join("final/model.safetensors")).unwrap(), rankforge::st::load(&f.run.join("final/model.safetensors")).unwrap());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!((ta - tb).abs().max().double_value(&[]), 0.0, "{na}");
    }
}
