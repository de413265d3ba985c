//! Slurm integration for the rankforge launcher.
//!
//! Under `srun`, every task learns its rank, node and the job layout from
//! `SLURM_*` environment variables. The node list arrives in Slurm's
//! compressed hostlist syntax (`gpu[001-004,010],cpu01`), which is usually
//! expanded with `scontrol show hostnames`. `scontrol` is often missing inside
//! containers (enroot/Pyxis, Apptainer, Docker), so this module expands
//! hostlists and task counts natively and never shells out.

use std::str::FromStr;

/// Upper bound on the entries one hostlist or task list may expand to, so a
/// typo such as `n[0-999999999]` fails cleanly instead of exhausting memory.
const MAX_ENTRIES: usize = 1 << 20;

/// Expands a Slurm compressed hostlist into individual host names.
///
/// Supports comma-separated hosts, numeric ranges and single values inside
/// brackets (`gpu[001-004,010]`), zero padding to the width of each lower
/// bound, text after a bracket (`node[1-3]-ib`), and several bracket groups in
/// one name, expanded as a cartesian product in Slurm's order
/// (`a[1-2]b[3-4]` -> `a1b3,a1b4,a2b3,a2b4`).
///
/// Errors name the input and the problem: empty list or host name, unbalanced
/// or nested brackets, empty brackets, non-numeric or descending ranges.
pub fn expand_hostlist(s: &str) -> Result<Vec<String>, String> {
    let err = |what: String| format!("invalid hostlist {s:?}: {what}");
    let list = s.trim();
    if list.is_empty() {
        return Err(err("empty hostlist".into()));
    }
    let mut hosts = Vec::new();
    for pattern in split_top_level(list).map_err(err)? {
        if pattern.is_empty() {
            return Err(err("empty host name".into()));
        }
        expand_pattern(pattern, &mut hosts).map_err(err)?;
    }
    Ok(hosts)
}

/// Splits on commas outside brackets, checking that brackets balance.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut start, mut open) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        match c {
            '[' if open => return Err(format!("nested '[' at byte {i}")),
            '[' => open = true,
            ']' if !open => return Err(format!("unmatched ']' at byte {i}")),
            ']' => open = false,
            ',' if !open => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if open {
        return Err("unclosed '['".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// Expands one host pattern (brackets already balanced) onto `out`.
fn expand_pattern(pattern: &str, out: &mut Vec<String>) -> Result<(), String> {
    let mut names = vec![String::new()];
    let mut rest = pattern;
    while let Some(open) = rest.find('[') {
        let close = open + rest[open..].find(']').ok_or("unclosed '['")?;
        let (prefix, body) = (&rest[..open], &rest[open + 1..close]);
        let values = expand_ranges(body)?;
        if names.len().saturating_mul(values.len()) + out.len() > MAX_ENTRIES {
            return Err(format!("expands to more than {MAX_ENTRIES} hosts"));
        }
        names = names
            .iter()
            .flat_map(|n| values.iter().map(move |v| format!("{n}{prefix}{v}")))
            .collect();
        rest = &rest[close + 1..];
    }
    out.extend(names.into_iter().map(|n| n + rest));
    Ok(())
}

/// Expands the inside of one bracket group, e.g. `001-004,010`.
fn expand_ranges(body: &str) -> Result<Vec<String>, String> {
    if body.is_empty() {
        return Err("empty brackets '[]'".into());
    }
    let mut values = Vec::new();
    for item in body.split(',') {
        let (lo_s, hi_s) = item.split_once('-').unwrap_or((item, item));
        let bound = |b: &str| {
            parse_digits::<u64>(b).ok_or_else(|| format!("non-numeric range {item:?} in [{body}]"))
        };
        let (lo, hi) = (bound(lo_s)?, bound(hi_s)?);
        if hi < lo {
            return Err(format!("descending range {item:?} in [{body}]"));
        }
        if hi - lo >= (MAX_ENTRIES - values.len()) as u64 {
            return Err(format!(
                "range {item:?} expands to more than {MAX_ENTRIES} hosts"
            ));
        }
        let width = lo_s.len();
        values.extend((lo..=hi).map(|n| format!("{n:0width$}")));
    }
    Ok(values)
}

/// Parses a non-empty string of ASCII digits (no sign, no whitespace).
fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Expands `SLURM_TASKS_PER_NODE` syntax, e.g. `2(x3),1` -> `[2, 2, 2, 1]`.
pub fn expand_tasks_per_node(s: &str) -> Result<Vec<usize>, String> {
    let err = |what: String| format!("invalid tasks-per-node {s:?}: {what}");
    let list = s.trim();
    if list.is_empty() {
        return Err(err("empty list".into()));
    }
    let mut counts = Vec::new();
    for item in list.split(',') {
        let malformed = || err(format!("malformed entry {item:?}, expected N or N(xM)"));
        let (count, repeat) = match item.strip_suffix(')') {
            Some(head) => head.split_once("(x").ok_or_else(malformed)?,
            None => (item, "1"),
        };
        let count = parse_digits::<usize>(count).ok_or_else(malformed)?;
        let repeat = parse_digits::<usize>(repeat)
            .filter(|&r| r > 0)
            .ok_or_else(malformed)?;
        if repeat > MAX_ENTRIES - counts.len() {
            return Err(err(format!("expands to more than {MAX_ENTRIES} entries")));
        }
        counts.resize(counts.len() + repeat, count);
    }
    Ok(counts)
}

/// Layout of the current task, as described by the `SLURM_*` variables that
/// `srun` sets for every task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmEnv {
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    /// Global rank of this task (`SLURM_PROCID`).
    pub proc_id: usize,
    /// Rank of this task on its node (`SLURM_LOCALID`).
    pub local_id: usize,
    /// Index of this task's node (`SLURM_NODEID`).
    pub node_id: usize,
    /// Total number of tasks (`SLURM_NTASKS`).
    pub ntasks: usize,
    /// Number of nodes (`SLURM_NNODES`, else the number of expanded nodes).
    pub nnodes: usize,
    /// Expanded `SLURM_JOB_NODELIST` (or `SLURM_NODELIST`).
    pub nodes: Vec<String>,
    /// Expanded `SLURM_TASKS_PER_NODE` (or `SLURM_NTASKS_PER_NODE`, repeated
    /// for every node).
    pub tasks_per_node: Vec<usize>,
    /// `SLURM_RESTART_COUNT` (0 when unset): how often Slurm requeued the job.
    pub restart_count: u32,
}

/// Reads the Slurm task layout through `get` (normally
/// `|k| std::env::var(k).ok()`).
///
/// Returns `Ok(None)` unless both `SLURM_JOB_ID` and `SLURM_PROCID` are set,
/// i.e. unless this process was started by `srun` (a plain `sbatch` shell has
/// no `SLURM_PROCID`). Errors name the variable and its bad value, e.g.
/// `SLURM_NODEID = "x": expected a non-negative integer`. Deliberately does
/// not read `SLURM_LAUNCH_NODE_IPADDR`.
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<SlurmEnv>, String> {
    let (Some(job_id), Some(proc_raw)) = (get("SLURM_JOB_ID"), get("SLURM_PROCID")) else {
        return Ok(None);
    };
    let required = |name: &str| {
        let raw = get(name).ok_or_else(|| format!("{name} is not set (SLURM_PROCID is)"))?;
        parse_var(name, &raw)
    };
    let proc_id = parse_var("SLURM_PROCID", &proc_raw)?;
    let local_id = required("SLURM_LOCALID")?;
    let node_id = required("SLURM_NODEID")?;
    let ntasks = required("SLURM_NTASKS")?;

    let (list_var, list) = ["SLURM_JOB_NODELIST", "SLURM_NODELIST"]
        .into_iter()
        .find_map(|name| get(name).map(|v| (name, v)))
        .ok_or("neither SLURM_JOB_NODELIST nor SLURM_NODELIST is set")?;
    let nodes = expand_hostlist(&list).map_err(|e| format!("{list_var}: {e}"))?;
    let nnodes = match get("SLURM_NNODES") {
        Some(raw) => parse_var("SLURM_NNODES", &raw)?,
        None => nodes.len(),
    };
    let tasks_per_node = if let Some(raw) = get("SLURM_TASKS_PER_NODE") {
        expand_tasks_per_node(&raw).map_err(|e| format!("SLURM_TASKS_PER_NODE: {e}"))?
    } else if let Some(raw) = get("SLURM_NTASKS_PER_NODE") {
        let mut v =
            expand_tasks_per_node(&raw).map_err(|e| format!("SLURM_NTASKS_PER_NODE: {e}"))?;
        if v.len() == 1 {
            v = vec![v[0]; nnodes];
        }
        v
    } else {
        return Err("neither SLURM_TASKS_PER_NODE nor SLURM_NTASKS_PER_NODE is set".into());
    };
    let restart_count = match get("SLURM_RESTART_COUNT") {
        Some(raw) => parse_var("SLURM_RESTART_COUNT", &raw)?,
        None => 0,
    };

    if proc_id >= ntasks {
        return Err(format!(
            "SLURM_PROCID = {proc_id} is not below SLURM_NTASKS = {ntasks}"
        ));
    }
    if node_id >= nnodes {
        return Err(format!(
            "SLURM_NODEID = {node_id} is not below SLURM_NNODES = {nnodes}"
        ));
    }
    Ok(Some(SlurmEnv {
        job_id,
        proc_id,
        local_id,
        node_id,
        ntasks,
        nnodes,
        nodes,
        tasks_per_node,
        restart_count,
    }))
}

/// Parses a Slurm variable as a non-negative integer, naming it on failure.
fn parse_var<T: FromStr>(name: &str, raw: &str) -> Result<T, String> {
    parse_digits(raw.trim())
        .ok_or_else(|| format!("{name} = {raw:?}: expected a non-negative integer"))
}

/// Default coordinator port for a job, in `20000..=39999`.
///
/// Numeric job ids map to `jobid % 20000 + 20000`; other ids (e.g.
/// heterogeneous `123+1`) are hashed with 64-bit FNV-1a first. This keeps
/// jobs that share a node from all colliding on 29500; jobs whose ids differ
/// by a multiple of 20000 can still clash, so an explicit port should win.
pub fn coordinator_port(job_id: &str) -> u16 {
    let id = job_id.trim();
    let n = parse_digits::<u64>(id).unwrap_or_else(|| {
        id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    });
    (20_000 + n % 20_000) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hosts(s: &str) -> Vec<String> {
        expand_hostlist(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fails(s: &str, needle: &str) {
        let e = expand_hostlist(s).expect_err(s);
        assert!(
            e.contains(needle) && e.contains(&format!("{s:?}")),
            "{s:?}: {e}"
        );
    }

    #[test]
    fn hostlist_examples() {
        assert_eq!(
            hosts("gpu[001-004,010],cpu01"),
            ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010", "cpu01"]
        );
        assert_eq!(hosts("node[1-3]-ib"), ["node1-ib", "node2-ib", "node3-ib"]);
        assert_eq!(hosts("a[1-2]b[3-4]"), ["a1b3", "a1b4", "a2b3", "a2b4"]);
        assert_eq!(hosts("login1"), ["login1"]);
        assert_eq!(hosts("a,b"), ["a", "b"]);
        assert_eq!(hosts("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(hosts("n[09-11]"), ["n09", "n10", "n11"]);
        assert_eq!(hosts("n[5]"), ["n5"]);
        assert_eq!(hosts("[1-2]x"), ["1x", "2x"]);
        assert_eq!(
            hosts("r[1-2]n[1,3],x[7]y"),
            ["r1n1", "r1n3", "r2n1", "r2n3", "x7y"]
        );
        assert_eq!(hosts(" a[1-2] "), ["a1", "a2"]);
    }

    #[test]
    fn hostlist_errors() {
        fails("", "empty hostlist");
        fails("   ", "empty hostlist");
        fails("a,,b", "empty host name");
        fails("a,", "empty host name");
        fails("gpu[1-3", "unclosed '['");
        fails("gpu1-3]", "unmatched ']'");
        fails("gpu[1-[2]]", "nested '['");
        fails("gpu[]", "empty brackets");
        fails("gpu[3-1]", "descending range \"3-1\"");
        fails("gpu[a-c]", "non-numeric range \"a-c\"");
        fails("gpu[1-]", "non-numeric range");
        fails("gpu[1,,2]", "non-numeric range");
        fails("gpu[1-2-3]", "non-numeric range");
        fails("gpu[0-999999999]", "more than");
        fails("a[0-999]b[0-999]c[0-9]", "more than");
    }

    #[test]
    fn tasks_per_node() {
        assert_eq!(expand_tasks_per_node("2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert_eq!(expand_tasks_per_node("8").unwrap(), [8]);
        assert_eq!(expand_tasks_per_node("4(x2)").unwrap(), [4, 4]);
        assert_eq!(expand_tasks_per_node("1,2(x1),3").unwrap(), [1, 2, 3]);
        for bad in [
            "", "x", "2(x)", "2(x0)", "2(3)", "(x2)", "2(x3", "1,,2", "-1", "2(x3)4",
        ] {
            let e = expand_tasks_per_node(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
        assert!(expand_tasks_per_node("1(x99999999999)")
            .unwrap_err()
            .contains("more than"));
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            assert_ne!(k, "SLURM_LAUNCH_NODE_IPADDR", "must never be read");
            map.get(k).cloned()
        }
    }

    const FULL: &[(&str, &str)] = &[
        ("SLURM_JOB_ID", "4242"),
        ("SLURM_PROCID", "5"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NODEID", "2"),
        ("SLURM_NTASKS", "7"),
        ("SLURM_NNODES", "4"),
        ("SLURM_JOB_NODELIST", "gpu[001-003],cpu01"),
        ("SLURM_TASKS_PER_NODE", "2(x3),1"),
        ("SLURM_RESTART_COUNT", "3"),
        ("SLURM_LAUNCH_NODE_IPADDR", "10.0.0.1"),
    ];

    fn with(
        overrides: &[(&'static str, Option<&'static str>)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| !overrides.iter().any(|o| o.0 == *k))
            .collect();
        v.extend(
            overrides
                .iter()
                .filter_map(|&(k, val)| val.map(|val| (k, val))),
        );
        v
    }

    #[test]
    fn from_env_full() {
        let s = from_env(env(FULL)).unwrap().unwrap();
        assert_eq!(
            s,
            SlurmEnv {
                job_id: "4242".into(),
                proc_id: 5,
                local_id: 1,
                node_id: 2,
                ntasks: 7,
                nnodes: 4,
                nodes: vec![
                    "gpu001".into(),
                    "gpu002".into(),
                    "gpu003".into(),
                    "cpu01".into()
                ],
                tasks_per_node: vec![2, 2, 2, 1],
                restart_count: 3,
            }
        );
    }

    #[test]
    fn from_env_not_under_srun() {
        assert_eq!(from_env(env(&[])).unwrap(), None);
        assert_eq!(
            from_env(env(&with(&[("SLURM_PROCID", None)]))).unwrap(),
            None
        );
        assert_eq!(
            from_env(env(&with(&[("SLURM_JOB_ID", None)]))).unwrap(),
            None
        );
    }

    #[test]
    fn from_env_fallbacks_and_defaults() {
        let s = from_env(env(&with(&[
            ("SLURM_JOB_NODELIST", None),
            ("SLURM_NODELIST", Some("n[1-4]")),
            ("SLURM_NNODES", None),
            ("SLURM_TASKS_PER_NODE", None),
            ("SLURM_NTASKS_PER_NODE", Some("2")),
            ("SLURM_NTASKS", Some("8")),
            ("SLURM_RESTART_COUNT", None),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(s.nodes, ["n1", "n2", "n3", "n4"]);
        assert_eq!(s.nnodes, 4);
        assert_eq!(s.tasks_per_node, [2, 2, 2, 2]);
        assert_eq!(s.restart_count, 0);

        // SLURM_JOB_NODELIST wins over SLURM_NODELIST.
        let s = from_env(env(&with(&[("SLURM_NODELIST", Some("other"))])))
            .unwrap()
            .unwrap();
        assert_eq!(s.nodes[0], "gpu001");
    }

    fn env_err(overrides: &[(&'static str, Option<&'static str>)]) -> String {
        from_env(env(&with(overrides))).expect_err("expected an error")
    }

    #[test]
    fn from_env_errors() {
        assert_eq!(
            env_err(&[("SLURM_NODEID", Some("x"))]),
            "SLURM_NODEID = \"x\": expected a non-negative integer"
        );
        assert!(env_err(&[("SLURM_PROCID", Some("-1"))]).starts_with("SLURM_PROCID = \"-1\""));
        assert!(env_err(&[("SLURM_NNODES", Some(""))]).starts_with("SLURM_NNODES = \"\""));
        assert!(env_err(&[("SLURM_RESTART_COUNT", Some("9999999999"))])
            .starts_with("SLURM_RESTART_COUNT = \"9999999999\""));
        assert!(env_err(&[("SLURM_LOCALID", None)]).contains("SLURM_LOCALID is not set"));
        assert!(env_err(&[("SLURM_NTASKS", None)]).contains("SLURM_NTASKS is not set"));
        let e = env_err(&[("SLURM_JOB_NODELIST", Some("gpu[3-1]"))]);
        assert!(
            e.starts_with("SLURM_JOB_NODELIST: ") && e.contains("descending"),
            "{e}"
        );
        assert!(env_err(&[("SLURM_JOB_NODELIST", None)]).contains("SLURM_NODELIST"));
        assert!(
            env_err(&[("SLURM_TASKS_PER_NODE", Some("2(x"))]).starts_with("SLURM_TASKS_PER_NODE: ")
        );
        assert!(env_err(&[("SLURM_TASKS_PER_NODE", None)]).contains("SLURM_NTASKS_PER_NODE"));
        assert!(env_err(&[("SLURM_PROCID", Some("7"))]).contains("SLURM_NTASKS = 7"));
        assert!(env_err(&[("SLURM_NODEID", Some("4"))]).contains("SLURM_NNODES = 4"));
    }

    #[test]
    fn coordinator_ports() {
        assert_eq!(coordinator_port("4242"), 24242);
        assert_eq!(coordinator_port("0"), 20000);
        assert_eq!(coordinator_port("19999"), 39999);
        assert_eq!(coordinator_port("20000"), 20000);
        assert_eq!(coordinator_port("1234567"), 34567);
        assert_eq!(coordinator_port(" 4242\n"), 24242);
        for id in ["123+1", "abc", "", "18446744073709551616"] {
            let p = coordinator_port(id);
            assert!((20000..=39999).contains(&p), "{id}: {p}");
            assert_eq!(p, coordinator_port(id), "deterministic");
        }
        assert_ne!(coordinator_port("123+0"), coordinator_port("123+1"));
    }
}
