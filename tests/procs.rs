//! Live processes by command line, for the no-orphans checks. Shared by the rankforge tests
//! (`mod procs` in tests.rs) and the launcher's (`#[path]` from launcher/tests/).

/// Live (non-zombie) processes whose command line mentions `needle` (a test's unique scratch
/// path), as `"<pid>: <command line>"`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
        if cmd.contains(needle) && !zombie {
            out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    out
}
