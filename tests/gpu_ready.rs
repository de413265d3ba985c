//! GPU readiness, proven on CPU (issue 11): the bundle that travels to a GPU host
//! (scripts/gpu_bundle.sh) and the GPU check it carries (bench/gpu_check.sh, in its CPU mode).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{root, scratch};

/// `PATH` with the project's venv first: its `python3` is the one with torch.
fn venv_path() -> String {
    format!("{}:{}", root().join(".venv/bin").display(), std::env::var("PATH").unwrap_or_default())
}

fn bundle(name: &str) -> PathBuf {
    let dir = scratch(name).join("bundle");
    let out = Command::new(root().join("scripts/gpu_bundle.sh")).arg(&dir).env("PATH", venv_path()).output().unwrap();
    assert!(out.status.success(), "gpu_bundle.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() { du(&e.path()) } else { e.metadata().unwrap().len() }
        })
        .sum()
}

/// The bundle is under 64 MiB, its binaries name no directory of this machine, and the
/// wrapper finds libtorch through whichever python3 has torch (and says so when none has).
#[test]
fn the_gpu_bundle_is_small_relocatable_and_finds_libtorch_through_python() {
    let dir = bundle("bundle");
    assert!(du(&dir) < 64 << 20, "the bundle is {} bytes", du(&dir));
    for b in ["rankforge", "rankforge-launch"] {
        let elf = Command::new("readelf").arg("-d").arg(dir.join("bin").join(b)).output().unwrap();
        let dynamic = String::from_utf8_lossy(&elf.stdout);
        assert!(elf.status.success() && dynamic.contains("NEEDED"), "{dynamic}");
        assert!(!dynamic.lines().any(|l| l.contains("PATH") && l.contains('/')), "{b} keeps a build-machine runpath:\n{dynamic}");
        let sections = Command::new("readelf").arg("-S").arg(dir.join("bin").join(b)).output().unwrap();
        assert!(!String::from_utf8_lossy(&sections.stdout).contains(".debug_line"), "{b} is not stripped");
    }
    // The real binary alone cannot find libtorch any more; the wrapper can.
    let bare = Command::new(dir.join("bin/rankforge")).arg("--version").env_remove("LD_LIBRARY_PATH").output().unwrap();
    assert!(!bare.status.success(), "bin/rankforge found libtorch without the wrapper");
    let v = Command::new(dir.join("rankforge")).arg("--version").env("PATH", venv_path()).env_remove("LD_LIBRARY_PATH").output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("rankforge "), "{}", String::from_utf8_lossy(&v.stdout));
    let none = Command::new(dir.join("rankforge")).arg("--version").env("RANKFORGE_PYTHON", "/bin/false").output().unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("has no torch"), "{}", String::from_utf8_lossy(&none.stderr));
}

/// `DEVICE=cpu bench/gpu_check.sh`, run from a bundle with the venv's python3 on PATH: every
/// step of the GPU check (training steps vs PyTorch, the launcher's collective and bench, the step vs PyTorch DDP,
/// LoRA and full fine-tuning, checkpoint/eval/export and exact resume, generation on two
/// devices) runs through the wrappers and passes.
#[test]
fn the_gpu_check_passes_in_cpu_mode_from_the_bundle() {
    let dir = bundle("check");
    let out_dir = dir.parent().unwrap().join("out");
    let out = Command::new(dir.join("bench/gpu_check.sh"))
        .env("DEVICE", "cpu")
        .env("OUT", &out_dir)
        .env("PATH", venv_path())
        .env_remove("PY")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gpu_check failed:\n{table}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["failed"], serde_json::json!([]), "{table}");
    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 12, "{table}");
    let status = |check: &str| rows.iter().find(|r| r["check"].as_str().is_some_and(|c| c.starts_with(check))).map(|r| r["status"].as_str().unwrap().to_string());
    for check in ["bench under the launcher", "data-parallel step vs PyTorch DDP", "20 steps, checkpoint, eval, export; resume", "greedy generation, device vs CPU"] {
        assert_eq!(status(check).as_deref(), Some("ok"), "{check}:\n{table}");
    }
}
