//! The gradient all-reduce overlapped with backward (`train.overlap_grad_reduce`, the default)
//! trains bit for bit like the all-reduce after backward, on 2 and 3 launched CPU ranks, with
//! gradient accumulation (two micro-batches per rank) and small buckets (many of them); and
//! `rankforge bench` reports how much of the all-reduce it hid.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Trains the tiny recipe for 6 steps on `ranks` launched ranks into `run`, with `set` on top.
fn launched(dir: &Path, run: &Path, ranks: &str, set: &[&str]) {
    let f = fixture();
    let recipe = tiny_recipe(dir, &f.corpus, &f.tokenizer, run);
    let mut args = vec!["--nproc-per-node", ranks, "--config", recipe.to_str().unwrap()];
    for s in ["train.max_steps=6", "train.micro_batch_size=2", "train.bucket_cap_mb=0.02"].iter().chain(set) {
        args.extend(["--set", s]);
    }
    let out = Command::new(bin().with_file_name("rankforge-launch"))
        .env("RANKFORGE_LOG", "warn")
        .env_remove("RANKFORGE_JOB_TOKEN")
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{ranks} ranks {set:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn final_weights(run: &Path) -> Vec<(String, Vec<u8>)> {
    let mut w: Vec<(String, Vec<u8>)> = rankforge::st::load(&run.join("final/model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let v = Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).reshape([-1])).unwrap();
            (n, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn overlapped_all_reduce_trains_bit_for_bit_like_the_post_backward_one_on_2_and_3_ranks() {
    let dir = scratch("overlap-equivalence");
    for ranks in ["2", "3"] {
        let (on, off) = (dir.join(format!("on{ranks}")), dir.join(format!("off{ranks}")));
        launched(&dir, &on, ranks, &[]);
        launched(&dir, &off, ranks, &["train.overlap_grad_reduce=false"]);
        let (lon, loff) = (losses(&on), losses(&off));
        assert_eq!(lon.len(), 6);
        assert_eq!(lon, loff, "{ranks} ranks: losses");
        let (won, woff) = (final_weights(&on), final_weights(&off));
        assert!(!won.is_empty());
        for ((n, a), (_, b)) in won.iter().zip(&woff) {
            assert!(a == b, "{ranks} ranks: weights {n} differ between overlap on and off");
        }
    }
}

#[test]
fn bench_reports_the_hidden_fraction_of_the_all_reduce() {
    let dir = scratch("overlap-bench");
    let f = fixture();
    let recipe = tiny_recipe(&dir, &f.corpus, &f.tokenizer, &dir.join("run"));
    let row = |overlap: &str| -> serde_json::Value {
        let out = Command::new(bin().with_file_name("rankforge-launch"))
            .env("RANKFORGE_LOG", "warn")
            .env_remove("RANKFORGE_JOB_TOKEN")
            .args(["--nproc-per-node", "2", "--", "bench", "--config", recipe.to_str().unwrap(), "--steps", "3", "--warmup", "1"])
            .args(["--set", "train.bucket_cap_mb=0.02", "--set", &format!("train.overlap_grad_reduce={overlap}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("\"impl\"")).unwrap_or_else(|| panic!("no bench row in {text}"));
        serde_json::from_str(line.trim_start_matches("[rank 0] ")).unwrap()
    };
    let (on, off) = (row("true"), row("false"));
    for (r, overlap) in [(&on, true), (&off, false)] {
        assert_eq!(r["overlap_grad_reduce"], overlap, "{r}");
        assert_eq!(r["bucket_cap_mb"], 0.02);
        let (all, exposed, frac) = (r["allreduce_ms"].as_f64().unwrap(), r["exposed_allreduce_ms"].as_f64().unwrap(), r["overlap_fraction"].as_f64().unwrap());
        assert!(all > 0.0 && exposed >= 0.0 && (0.0..=1.0).contains(&frac), "{r}");
    }
    assert_eq!(off["overlap_fraction"], 0.0, "after backward nothing is hidden: {off}");
    assert_eq!(on["losses"], off["losses"], "the same bits either way");
}
