//! Shared helpers: paths, running the binary, and a fixture (a tokenizer and one tiny trained
//! run) built once per test process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rankforge"))
}

/// The project's Python (scripts/setup.sh makes it); the conformance tests need it.
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh first", p.display());
    p
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `rankforge args...` and returns its output.
pub fn rankforge(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("RANKFORGE_LOG", "warn").output().expect("rankforge runs")
}

/// Runs `rankforge` and asserts success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = rankforge(args);
    assert!(
        out.status.success(),
        "rankforge {args:?} failed ({:?}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub struct Fixture {
    /// ~400 KB of the bundled corpus.
    pub corpus: PathBuf,
    /// A 1000-token byte-level BPE tokenizer directory.
    pub tokenizer: PathBuf,
    /// A finished 40-step tiny run (with final/ and checkpoints at 20 and 40).
    pub run: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = scratch("fixture");
        let text = std::fs::read_to_string(root().join("data/kjv.txt")).unwrap();
        let cut = text[..400_000].rfind('\n').unwrap() + 1;
        let corpus = dir.join("corpus.txt");
        std::fs::write(&corpus, &text[..cut]).unwrap();
        let tokenizer = dir.join("tok");
        ok(&["tokenizer", "train", "--input", corpus.to_str().unwrap(), "--vocab-size", "1000", "--kind", "bpe", "--output", tokenizer.to_str().unwrap()]);
        let run = dir.join("run");
        let recipe = tiny_recipe(&dir, &corpus, &tokenizer, &run);
        ok(&["train", "--config", recipe.to_str().unwrap()]);
        Fixture { corpus, tokenizer, run }
    })
}

/// Writes configs/gpt_tiny_pretrain_cpu.toml with its paths pointed at `corpus`, `tokenizer` and `run`, and
/// a private token cache; returns the recipe path.
pub fn tiny_recipe(dir: &Path, corpus: &Path, tokenizer: &Path, run: &Path) -> PathBuf {
    let base = std::fs::read_to_string(root().join("configs/gpt_tiny_pretrain_cpu.toml")).unwrap();
    let text = base
        .replace("\"runs/gpt_tiny\"", &format!("{:?}", run.display().to_string()))
        .replace("\"data/kjv.txt\"", &format!("{:?}", corpus.display().to_string()))
        .replace("\"runs/tok-1k\"", &format!("{:?}\ncache_dir = {:?}", tokenizer.display().to_string(), dir.join("cache").display().to_string()));
    let path = dir.join(format!("tiny-{}.toml", run.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The `loss` of each step row of a run's metrics.jsonl.
pub fn losses(run: &Path) -> Vec<f64> {
    rankforge::metrics::read_losses(&run.join("metrics.jsonl")).unwrap().into_iter().map(|(_, l)| l).collect()
}

/// All regular files under `dir` with their bytes, sorted by path (to prove nothing changed).
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Waits (up to 60 s) until `run`'s metrics have at least `n` step rows.
pub fn wait_for_rows(run: &Path, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().filter(|l| l.contains("\"loss\"")).count()).unwrap_or(0) < n {
        assert!(std::time::Instant::now() < deadline, "training never reached step {n}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `rankforge args`, expecting a clean bad-input failure; returns the error line.
pub fn fails(args: &[&str]) -> String {
    let out = rankforge(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "rankforge {args:?}: expected exit 2, got {:?}\n{err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("internal error") && !err.contains("RUST_BACKTRACE"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line:\n{err}");
    lines[0].to_string()
}
