//! Unit tests of [`super`] on hand-made tensors; the conformance with TRL on a real model is in
//! tests/dpo_loss.rs.

use super::*;
use tch::{Device, Kind, Tensor};

const V: i64 = 11;

/// B = 2 pairs, T = 6, right-padded. Row 0 (chosen): prompt 2, completion 3, pad 1. Row 1
/// (chosen): empty prompt, completion 4 from position 0, pad 2. Row 2 (rejected): prompt 2,
/// completion 4. Row 3 (rejected): empty prompt, completion 1, pad 5.
fn batch() -> (Tensor, Tensor) {
    let mask: [[i64; 6]; 4] = [[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]];
    tch::manual_seed(3);
    let ids = Tensor::randint(V, [4, 6], (Kind::Int64, Device::Cpu));
    (ids, Tensor::from_slice(&mask.concat()).view([4, 6]))
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// Per row, in f64 with explicit loops: (Σ log p(ids[t+1] | logits[t]), scored tokens,
/// completion length, Σ mean logit) over the t with mask[t+1] = 1.
fn naive(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Vec<[f64; 4]> {
    let (rows, t) = ids.size2().unwrap();
    let (z, ids, mask) = (values(logits), values(ids), values(mask));
    let at = |r: i64, p: i64, k: i64| z[((r * t + p) * V + k) as usize];
    (0..rows)
        .map(|r| {
            let mut out = [0.0, 0.0, (0..t).map(|p| mask[(r * t + p) as usize]).sum(), 0.0];
            for p in 0..t - 1 {
                if mask[(r * t + p + 1) as usize] == 0.0 {
                    continue;
                }
                let lse = (0..V).map(|k| at(r, p, k).exp()).sum::<f64>().ln();
                out[0] += at(r, p, ids[(r * t + p + 1) as usize] as i64) - lse;
                out[1] += 1.0;
                out[3] += (0..V).map(|k| at(r, p, k)).sum::<f64>() / V as f64;
            }
            out
        })
        .collect()
}

#[test]
fn sequence_logps_scores_the_shifted_completion_tokens_only() {
    let (ids, mask) = batch();
    let logits = Tensor::randn([4, 6, V], (Kind::Float, Device::Cpu)) * 3.0;
    let s = sequence_logps(&logits, &ids, &mask);
    let want = naive(&logits, &ids, &mask);
    for (name, got, k) in [("logps", &s.logps, 0), ("tokens", &s.tokens, 1), ("completion_len", &s.completion_len, 2), ("logit_sums", &s.logit_sums, 3)] {
        assert_eq!(got.kind(), Kind::Float, "{name}");
        for (r, (g, w)) in values(got).iter().zip(&want).enumerate() {
            assert!((g - w[k]).abs() <= 1e-5, "{name}[{r}]: {g} vs {}", w[k]);
        }
    }
    assert_eq!(values(&s.tokens), [3.0, 3.0, 4.0, 0.0], "the token at position 0 is never scored");
    assert_eq!(values(&s.completion_len), [3.0, 4.0, 4.0, 1.0]);
    assert_eq!(s.pairs(), 2);
}

#[test]
fn sequence_logps_of_bf16_logits_are_fp32() {
    let (ids, mask) = batch();
    let logits = (Tensor::randn([4, 6, V], (Kind::Float, Device::Cpu)) * 3.0).to_kind(Kind::BFloat16);
    let s = sequence_logps(&logits, &ids, &mask);
    let f = sequence_logps(&logits.to_kind(Kind::Float), &ids, &mask);
    assert_eq!((s.logps.kind(), s.logit_sums.kind()), (Kind::Float, Kind::Float));
    assert!(max_diff(&s.logps, &f.logps) <= 1e-6 && max_diff(&s.logit_sums, &f.logit_sums) <= 1e-6);
}

/// d logps[r] / d logits[r, t] is onehot(ids[t+1]) − softmax at scored positions, 0 elsewhere
/// (prompt, padding, the last position).
#[test]
fn only_scored_positions_get_a_gradient() {
    let (ids, mask) = batch();
    let logits = (Tensor::randn([4, 6, V], (Kind::Float, Device::Cpu)) * 3.0).set_requires_grad(true);
    sequence_logps(&logits, &ids, &mask).logps.sum(Kind::Float).backward();
    let next = Tensor::cat(&[mask.narrow(1, 1, 5), mask.zeros_like().narrow(1, 0, 1)], 1).unsqueeze(2); // [4, 6, 1]
    let targets = Tensor::cat(&[ids.narrow(1, 1, 5), ids.zeros_like().narrow(1, 0, 1)], 1);
    let want = (targets.one_hot(V).to_kind(Kind::Float) - logits.detach().softmax(-1, Kind::Float)) * &next;
    assert!(max_diff(&logits.grad(), &want) <= 1e-6);
    assert!(logits.grad().abs().sum_dim_intlist(2, false, Kind::Float).masked_select(&next.squeeze_dim(2).eq(0)).max().double_value(&[]) == 0.0);
}

/// Projecting only the scored hidden states gives the same values and gradients (hidden states
/// and head weight) as the full logits.
#[test]
fn hidden_path_equals_logits_path_with_gradients() {
    let (ids, mask) = batch();
    let hidden0 = Tensor::randn([4, 6, 8], (Kind::Float, Device::Cpu));
    let weight0 = Tensor::randn([V, 8], (Kind::Float, Device::Cpu));
    let coef = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]);
    let run = |lean: bool| {
        let (hidden, weight) = (hidden0.copy().set_requires_grad(true), weight0.copy().set_requires_grad(true));
        let s = if lean {
            sequence_logps_from_hidden(&hidden, |x| x.linear::<Tensor>(&weight, None), &ids, &mask)
        } else {
            sequence_logps(&hidden.linear::<Tensor>(&weight, None), &ids, &mask)
        };
        (&s.logps * &coef).sum(Kind::Float).backward();
        (s, hidden.grad(), weight.grad())
    };
    let (a, ha, wa) = run(false);
    let (b, hb, wb) = run(true);
    assert!(max_diff(&a.logps, &b.logps) <= 1e-6 && max_diff(&a.logit_sums, &b.logit_sums) <= 1e-6);
    assert_eq!(values(&a.tokens), values(&b.tokens));
    assert!(max_diff(&ha, &hb) <= 1e-5, "hidden-state gradients differ: {}", max_diff(&ha, &hb));
    assert!(max_diff(&wa, &wb) <= 1e-5, "head gradients differ: {}", max_diff(&wa, &wb));
    assert!(wa.abs().max().double_value(&[]) > 1e-3, "the head has a real gradient");
}

/// Stats of B = 3 pairs with the given policy log-probs and completion lengths.
fn stats(logps: &[f32], len: &[f32]) -> SeqStats {
    let t = |v: &[f32]| Tensor::from_slice(v);
    SeqStats { logps: t(logps), tokens: t(len), completion_len: t(len), logit_sums: t(len) * 0.5 }
}

#[test]
fn policy_equal_to_reference_gives_ln2_for_any_beta() {
    let s = stats(&[-3.0, -10.5, -7.25, -4.0, -1.5, -20.0], &[2.0, 5.0, 3.0, 1.0, 1.0, 9.0]);
    let (c, r) = s.chosen_rejected();
    for beta in [0.1f64, 2.0] {
        for (loss_type, want) in [(LossType::Sigmoid, std::f64::consts::LN_2), (LossType::Robust, std::f64::consts::LN_2), (LossType::Hinge, 1.0), (LossType::Ipo, (0.5 / beta).powi(2))] {
            let out = DpoLoss { beta, loss_type, label_smoothing: 0.2 }.pair_losses(&s, &c, &r);
            let m: std::collections::HashMap<_, _> = out.sums.metrics().into_iter().collect();
            assert!((m["loss"] - want).abs() <= 1e-6 * want.max(1.0), "{loss_type:?} β={beta}: {} vs {want}", m["loss"]);
            assert!((out.loss_share(3).double_value(&[]) - want).abs() <= 1e-5 * want.max(1.0));
            assert_eq!((m["rewards/chosen"], m["rewards/margins"], m["rewards/accuracies"]), (0.0, 0.0, 0.0), "ties are not accurate");
        }
    }
}

/// Each loss against its formula in f64, with Δ of both signs (hinge clips), an IPO length of 0
/// (clamped to 1), robust ε = 0.2.
#[test]
fn each_loss_type_follows_its_formula() {
    let (beta, eps) = (1.5, 0.2);
    let policy = [-3.0, -10.5, -7.25, -4.0, -1.5, -20.0];
    let reference = [-3.5f32, -10.0, -7.0, -3.0, -2.5, -19.0];
    let len = [2.0, 0.0, 3.0, 1.0, 4.0, 9.0];
    let s = stats(&policy, &len);
    let rc = Tensor::from_slice(&reference[..3]);
    let rr = Tensor::from_slice(&reference[3..]);
    let ls = |x: f64| -(1.0 + (-x).exp()).ln();
    for loss_type in LossType::ALL {
        let out = DpoLoss { beta, loss_type, label_smoothing: eps }.pair_losses(&s, &rc, &rr);
        for (i, got) in values(&out.losses).into_iter().enumerate() {
            let (dc, dr) = ((policy[i] - reference[i]) as f64, (policy[i + 3] - reference[i + 3]) as f64);
            let x = beta * (dc - dr);
            let want = match loss_type {
                LossType::Sigmoid => -ls(x),
                LossType::Hinge => (1.0 - x).max(0.0),
                LossType::Ipo => (dc / (len[i] as f64).max(1.0) - dr / (len[i + 3] as f64).max(1.0) - 1.0 / (2.0 * beta)).powi(2),
                LossType::Robust => (-(1.0 - eps) * ls(x) + eps * ls(-x)) / (1.0 - 2.0 * eps),
            };
            assert!((got - want).abs() <= 1e-5, "{loss_type:?} pair {i}: {got} vs {want}");
        }
    }
    let out = DpoLoss { beta, loss_type: LossType::Hinge, label_smoothing: 0.0 }.pair_losses(&s, &rc, &rr);
    assert_eq!(values(&out.losses)[2], 0.0, "βΔ = 1.5·(−0.25 + 1) > 1: clipped");
    let sums = out.sums;
    assert_eq!((sums.accuracies, sums.pairs, sums.chosen_tokens, sums.rejected_tokens), (2.0, 3.0, 5.0, 14.0));
    assert!((sums.chosen_logits - 2.5).abs() < 1e-9 && (sums.margins - 1.5 * 0.75).abs() < 1e-5);
}

#[test]
fn metric_sums_round_trip_add_and_name_trl_metrics() {
    let a = MetricSums::from_vec(&(1..=12).map(f64::from).collect::<Vec<_>>());
    assert_eq!(MetricSums::from_vec(&a.to_vec()), a);
    let mut b = a;
    b += a;
    assert_eq!(b.to_vec(), a.to_vec().iter().map(|x| 2.0 * x).collect::<Vec<_>>());
    let m = a.metrics();
    let names: Vec<&str> = m.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"]);
    assert_eq!(m[0].1, 1.0 / 12.0, "per pair");
    assert_eq!((m[7].1, m[8].1), (8.0 / 9.0, 10.0 / 11.0), "token-weighted");
    assert!(MetricSums::default().metrics().iter().all(|(_, v)| *v == 0.0));
}

#[test]
fn loss_types_parse_as_trl_spells_them() {
    for t in LossType::ALL {
        let parsed: LossType = serde_json::from_str(&format!("{:?}", t.as_str())).unwrap();
        assert_eq!(parsed, t);
    }
    assert!(serde_json::from_str::<LossType>("\"Sigmoid\"").is_err());
    assert_eq!(LossType::default(), LossType::Sigmoid);
}
