//! DPO loss conformance with TRL 1.16 on a tiny random Llama that transformers creates (fixed
//! seed), with a reference model whose weights are perturbed: rankforge's per-sequence
//! log-probs of a padded batch (one pair with an empty prompt) equal TRL's, and so do the loss
//! and every metric of `DPOTrainer.compute_loss` for sigmoid (two betas), ipo, hinge and robust
//! (≤ 1e-5); a batch split into micro-batches gives the same metrics and gradients as the whole.
//! Reference: tests/py/dpo_loss_reference.py.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use rankforge::dpo::loss::{sequence_logps, sequence_logps_from_hidden, DpoLoss, LossType, MetricSums, SeqStats};
use rankforge::models::{CausalArch, CausalLm};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;

/// What the reference script wrote: the models, TRL's collated batch, TRL's numbers.
struct Reference {
    dir: PathBuf,
    report: Value,
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("dpo-loss-ref");
        let out = Command::new(python()).arg(root().join("tests/py/dpo_loss_reference.py")).arg(&dir).output().unwrap();
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
        let report = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        Reference { dir, report }
    })
}

/// TRL's batch: `input_ids`, `completion_mask` `[2B, T]`.
fn batch() -> (Tensor, Tensor) {
    let b: HashMap<String, Tensor> = rankforge::st::load(&reference().dir.join("batch.safetensors")).unwrap().into_iter().collect();
    (b["input_ids"].shallow_clone(), b["completion_mask"].shallow_clone())
}

fn model(name: &str) -> CausalLm {
    CausalLm::from_pretrained(&reference().dir.join(name), Device::Cpu, Kind::Float).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().to_kind(Kind::Double)).unwrap()
}

/// Asserts |got − want| ≤ TOL elementwise; prints (under --nocapture) the largest difference.
fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL, "{what}[{i}]: rankforge {g} vs TRL {w} (|Δ| = {:e})", (g - w).abs());
    }
    let largest = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    eprintln!("{what}: max |rankforge − TRL| = {largest:.1e}");
}

/// The policy's statistics (train mode, with gradients) and the reference's chosen/rejected
/// log-probs (no gradient) for `ids`, `mask`.
fn forward(policy: &CausalLm, reference: &CausalLm, ids: &Tensor, mask: &Tensor) -> (SeqStats, Tensor, Tensor) {
    let stats = sequence_logps(&policy.forward(ids, true, None), ids, mask);
    let (rc, rr) = tch::no_grad(|| sequence_logps(&reference.forward(ids, false, None), ids, mask)).chosen_rejected();
    (stats, rc, rr)
}

#[test]
fn dpo_sequence_logps_match_trl_from_logits_and_from_hidden_states() {
    let r = reference();
    let (ids, mask) = batch();
    let (policy, reference_model) = (model("policy"), model("ref"));
    let (stats, rc, rr) = forward(&policy, &reference_model, &ids, &mask);
    assert_close("policy logps", &values(&stats.logps), &floats(&r.report["policy_logps"]));
    assert_close("reference logps", &values(&Tensor::cat(&[rc, rr], 0)), &floats(&r.report["ref_logps"]));
    assert_eq!(values(&stats.tokens), [3.0, 2.0, 3.0, 6.0, 5.0, 3.0, 1.0, 6.0], "scored completion tokens (EOS included)");

    // The lean path: the final hidden states, projected through lm_head at the scored positions only.
    let CausalArch::Llama(llama) = &policy.arch else { panic!("the reference model is a Llama") };
    let head = policy.named_parameters().into_iter().find(|(n, _)| n == "lm_head.weight").expect("an untied lm_head").1;
    let hidden = llama.forward_hidden(&ids, None, true, None);
    let lean = sequence_logps_from_hidden(&hidden, |x| x.linear::<Tensor>(&head, None), &ids, &mask);
    assert_close("policy logps (hidden path)", &values(&lean.logps), &floats(&r.report["policy_logps"]));
    assert_close("logit sums (hidden path)", &values(&lean.logit_sums), &values(&stats.logit_sums));
}

#[test]
fn dpo_loss_and_metrics_match_trl_for_every_loss_type() {
    let r = reference();
    let (ids, mask) = batch();
    let (stats, rc, rr) = forward(&model("policy"), &model("ref"), &ids, &mask);
    let cases = r.report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    let mut seen = Vec::new();
    for case in cases {
        let loss_type: LossType = serde_json::from_value(case["loss_type"].clone()).unwrap();
        let dpo = DpoLoss { beta: case["beta"].as_f64().unwrap(), loss_type, label_smoothing: case["label_smoothing"].as_f64().unwrap() };
        let out = dpo.pair_losses(&stats, &rc, &rr);
        let what = format!("{} β={}", loss_type.as_str(), dpo.beta);
        let metrics = out.sums.metrics();
        assert_eq!(metrics.len(), 9);
        for (name, got) in metrics {
            let want = if name == "loss" { &case["loss"] } else { &case["metrics"][name] };
            assert_close(&format!("{what} {name}"), &[got], &[want.as_f64().unwrap_or_else(|| panic!("TRL logged no {name}"))]);
        }
        assert_close(&format!("{what} loss_share"), &[out.loss_share(4).double_value(&[])], &[case["loss"].as_f64().unwrap()]);
        seen.push(loss_type);
    }
    assert!(LossType::ALL.iter().all(|t| seen.contains(t)), "every loss type is checked: {seen:?}");
    let accuracy = cases[0]["metrics"]["rewards/accuracies"].as_f64().unwrap();
    assert!(accuracy > 0.0 && accuracy < 1.0, "the pairs disagree in sign ({accuracy}): accuracy is really tested");
}

/// Rows of the pairs `pairs` of a `[2B, T]` batch: their chosen rows, then their rejected rows.
fn pick(t: &Tensor, pairs: &[i64], b: i64) -> Tensor {
    let rows: Vec<i64> = pairs.iter().copied().chain(pairs.iter().map(|p| p + b)).collect();
    t.index_select(0, &Tensor::from_slice(&rows))
}

fn grads(model: &CausalLm) -> Vec<(String, Tensor)> {
    model.named_parameters().into_iter().map(|(n, t)| (n, t.grad().copy())).collect()
}

/// Two micro-batches (pairs {0, 2} and {1, 3}) whose sums are merged as an all-reduce would
/// (f64 vectors added) give the whole batch's metrics (and TRL's), and their loss shares
/// back-propagated one after the other give the whole batch's gradient.
#[test]
fn dpo_micro_batches_merge_to_the_whole_batch() {
    let r = reference();
    let (ids, mask) = batch();
    let reference_model = model("ref");
    let dpo = DpoLoss { beta: 0.1, loss_type: LossType::Sigmoid, label_smoothing: 0.0 };

    let whole_model = model("policy");
    let (stats, rc, rr) = forward(&whole_model, &reference_model, &ids, &mask);
    let whole = dpo.pair_losses(&stats, &rc, &rr);
    whole.loss_share(4).backward();

    let split_model = model("policy");
    let mut merged = vec![0.0; MetricSums::LEN];
    for pairs in [[0, 2], [1, 3]] {
        let (sub_ids, sub_mask) = (pick(&ids, &pairs, 4), pick(&mask, &pairs, 4));
        let (stats, rc, rr) = forward(&split_model, &reference_model, &sub_ids, &sub_mask);
        let out = dpo.pair_losses(&stats, &rc, &rr);
        out.loss_share(4).backward();
        merged.iter_mut().zip(out.sums.to_vec()).for_each(|(m, x)| *m += x);
    }
    let merged = MetricSums::from_vec(&merged);
    assert_eq!(merged.pairs, 4.0);
    let case = &r.report["cases"][0];
    assert_eq!(case["loss_type"], "sigmoid");
    for ((name, got), (_, want)) in merged.metrics().into_iter().zip(whole.sums.metrics()) {
        assert!((got - want).abs() <= 1e-6, "{name}: micro-batches {got} vs whole batch {want}");
        let trl = if name == "loss" { &case["loss"] } else { &case["metrics"][name] };
        assert_close(name, &[got], &[trl.as_f64().unwrap()]);
    }
    let mut largest = 0.0f64;
    for ((name, a), (_, b)) in grads(&whole_model).into_iter().zip(grads(&split_model)) {
        let d = (&a - &b).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "{name}: gradient of the micro-batches differs by {d:e}");
        largest = largest.max(a.abs().max().double_value(&[]));
    }
    assert!(largest > 1e-3, "the policy has a real gradient ({largest:e})");
}
