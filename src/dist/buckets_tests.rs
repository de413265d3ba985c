//! Buckets: the plan's order and sizes; overlapped and post-backward reductions give the same
//! bits on 2 and 3 in-process ranks (TCP rings between threads), with gradient accumulation,
//! several buckets, a bf16 parameter, one that gets no gradient anywhere and one that gets one
//! on rank 0 only.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::*;
use crate::dist::{ring, RankContext};

fn ranks(world: usize) -> Vec<Dist> {
    ring::tests::rings(world)
        .into_iter()
        .enumerate()
        .map(|(rank, ring)| {
            let ctx = RankContext { rank, world_size: world, ..RankContext::single() };
            Dist { ctx, control: None, coll: Box::new(ring), status: Arc::default(), hosts: vec![] }
        })
        .collect()
}

fn zeros(n: i64, kind: Kind) -> Tensor {
    Tensor::zeros([n], (kind, Device::Cpu))
}

#[test]
fn plan_is_reverse_forward_order_one_dtype_per_bucket_within_the_cap() {
    let t = |n: i64, kind: Kind| zeros(n, kind).set_requires_grad(true);
    let frozen = zeros(8, Kind::Float);
    let named = [
        ("transformer.h.0.w", t(4, Kind::Float)),
        ("transformer.h.1.w", t(4, Kind::Float)),
        ("transformer.h.10.w", t(4, Kind::Float)),
        ("transformer.h.2.w", t(4, Kind::Float)),
        ("transformer.h.2.frozen", frozen),
        ("transformer.ln_f.w", t(2, Kind::Float)),
        ("transformer.wte.w", t(20, Kind::Float)),
        ("transformer.h.3.bf", t(4, Kind::BFloat16)),
    ];
    let plan = Plan::new(named.iter().map(|(n, t)| (*n, t)), 32);
    // Indices skip the frozen tensor: h.0=0, h.1=1, h.10=2, h.2=3, ln_f=4, wte=5, h.3.bf=6.
    // Reverse forward order: ln_f, h.10, h.3.bf, h.2, h.1, h.0, wte; f32 buckets of <= 32 bytes.
    assert_eq!(plan.buckets(), [vec![4, 2], vec![6], vec![3, 1], vec![0], vec![5]]);
    assert_eq!(plan.params.len(), 7, "frozen tensors are not reduced");
    assert_eq!(Plan::new(std::iter::empty(), 32).buckets(), [Vec::<usize>::new()], "the extra sums still travel");
}

/// A rank's tensors: (name, tensor), deterministic and different per rank.
fn params() -> Vec<(&'static str, Tensor)> {
    let init = |n: i64, kind: Kind, phase: f64| (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37 + phase).sin().to_kind(kind).set_requires_grad(true);
    vec![
        ("model.embed.w", init(300, Kind::Float, 0.1)),
        ("model.layers.1.w", init(257, Kind::Float, 0.2)),
        ("model.layers.2.w", init(1000, Kind::Float, 0.3)),
        ("model.layers.2.bf", init(64, Kind::BFloat16, 0.4)),
        // Early in forward order: their buckets come late (the first bucket, the head's, is
        // ready during backward on every rank).
        ("model.layers.0.unused", init(10, Kind::Float, 0.5)),
        ("model.layers.0.rank0_only", init(7, Kind::Float, 0.6)),
        ("head.w", init(33, Kind::Float, 0.7)),
    ]
}

/// Micro-batch `k`'s loss on rank `r`: every tensor but `unused`, `rank0_only` on rank 0 only.
fn loss(ps: &[(&str, Tensor)], r: usize, k: usize) -> Tensor {
    let x = |n: i64| (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.11 + (r * 3 + k) as f64).cos();
    let p = |i: usize| &ps[i].1;
    let h = (p(0).narrow(0, 0, 257) * x(257)).tanh() * p(1); // (257)
    let mut l = h.sum(Kind::Float) + (p(2) * x(1000)).pow_tensor_scalar(2).sum(Kind::Float) * 1e-3;
    l = l + (p(3).to_kind(Kind::Float) * x(64)).exp().sum(Kind::Float) + (p(6) * h.narrow(0, 0, 33)).sum(Kind::Float);
    if r == 0 {
        l = l + p(5).pow_tensor_scalar(3).sum(Kind::Float);
    }
    l / (k + 2) as f64
}

/// Two micro-batches (the first only accumulates) and the reduction of the second's gradients,
/// overlapped or after backward; every gradient's bits (`None`: no gradient) and the sums.
fn one_step(d: &mut Dist, overlap: bool, cap: usize) -> (Vec<Option<Vec<u16>>>, Vec<f64>, Timing) {
    let r = d.rank();
    let ps = params();
    loss(&ps, r, 0).backward();
    let plan = Plan::new(ps.iter().map(|(n, t)| (*n, t)), cap);
    assert_eq!(plan.buckets(), [vec![6], vec![2], vec![3], vec![1], vec![4, 5], vec![0]]);
    let mut extra = vec![r as f64 + 1.0, 0.5];
    let last = loss(&ps, r, 1);
    let timing = if overlap {
        let status = d.status.clone();
        let before = status.collective_seq.load(Ordering::Relaxed);
        d.reduce_grads_overlapped(&plan, &mut extra, || {
            last.f_backward()?;
            // Backward has returned but is not reported yet: the first bucket was launched by
            // the gradient hooks during backward, or is never launched (the test then fails).
            let t0 = std::time::Instant::now();
            while status.collective_seq.load(Ordering::Relaxed) == before {
                assert!(t0.elapsed().as_secs() < 20, "no bucket was all-reduced during backward");
                std::thread::yield_now();
            }
            Ok::<(), tch::TchError>(())
        })
        .unwrap()
    } else {
        last.backward();
        d.reduce_grads(&plan, &mut extra).unwrap()
    };
    let bits = ps
        .iter()
        .map(|(_, p)| {
            let g = p.grad();
            g.defined().then(|| {
                let v = Vec::<f32>::try_from(g.to_kind(Kind::Float)).unwrap();
                v.iter().flat_map(|x| { let b = x.to_bits(); [(b >> 16) as u16, b as u16] }).collect()
            })
        })
        .collect();
    (bits, extra, timing)
}

#[test]
fn overlapped_and_post_backward_reductions_give_the_same_bits_on_2_and_3_ranks() {
    for world in [2, 3] {
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = ranks(world)
                .into_iter()
                .map(|mut d| s.spawn(move || [false, true].map(|overlap| one_step(&mut d, overlap, 1024))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let want_sum: f64 = (1..=world).map(|r| r as f64).sum();
        for (r, [(off, off_extra, off_t), (on, on_extra, on_t)]) in results.iter().enumerate() {
            assert!(on == off, "world {world} rank {r}: overlapped gradients differ from post-backward ones");
            assert!(on == &results[0][1].0, "world {world}: rank {r} differs from rank 0");
            assert_eq!(on_extra, off_extra);
            assert_eq!(on_extra, &vec![want_sum, 0.5 * world as f64]);
            assert!(on[4].is_none(), "a tensor no rank used keeps no gradient (AdamW leaves it alone)");
            assert!(on[5].is_some(), "rank {r}: a tensor used on rank 0 only receives rank 0's gradient");
            assert!(on.iter().enumerate().all(|(i, g)| i == 4 || g.is_some()));
            for t in [off_t, on_t] {
                assert!(t.allreduce_s > 0.0 && t.exposed_s >= 0.0 && t.exposed_s.is_finite(), "{t:?}");
            }
            assert_eq!(off_t.exposed_s, off_t.allreduce_s, "after backward, all of the all-reduce is exposed");
        }
        // Summed, not just copied: rank 0's gradient of the shared head differs from the sum.
        let single = {
            let ps = params();
            loss(&ps, 0, 0).backward();
            loss(&ps, 0, 1).backward();
            Vec::<f32>::try_from(ps[6].1.grad()).unwrap()
        };
        let summed: Vec<f32> = results[0][1].0[6].as_ref().unwrap().chunks(2).map(|c| f32::from_bits((c[0] as u32) << 16 | c[1] as u32)).collect();
        assert!(single.iter().zip(&summed).any(|(a, b)| a != b), "world {world}: the head's gradient was not summed");
    }
}

/// bf16 weights have bf16 gradients, reduced in f32 buffers and rounded back.
#[test]
fn bf16_gradients_are_reduced_in_f32_buckets() {
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = ranks(2)
            .into_iter()
            .map(|mut d| {
                s.spawn(move || {
                    let r = d.rank() as f64 + 1.0;
                    let a = zeros(1000, Kind::BFloat16).set_requires_grad(true);
                    let b = zeros(3, Kind::BFloat16).set_requires_grad(true);
                    let c = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_kind(Kind::BFloat16);
                    let plan = Plan::new([("a", &a), ("b", &b)], 1000);
                    let l = (a.sum(Kind::Float) * r) + (&b * &c).sum(Kind::Float) * r;
                    let mut extra = [r];
                    d.reduce_grads_overlapped(&plan, &mut extra, || l.f_backward()).unwrap();
                    let (ga, gb) = (a.grad(), b.grad());
                    (ga.kind(), ga.min().double_value(&[]), ga.max().double_value(&[]), Vec::<f32>::try_from(gb.to_kind(Kind::Float)).unwrap(), extra[0])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (kind, lo, hi, gb, extra) in results {
        assert_eq!(kind, Kind::BFloat16, "gradients keep their dtype");
        assert_eq!((lo, hi), (3.0, 3.0), "1 + 2 on every element");
        assert_eq!(gb, [3.0, 6.0, 9.0]);
        assert_eq!(extra, 3.0);
    }
}

/// A failing backward ends the communication thread instead of leaving it waiting.
#[test]
fn a_failing_backward_is_returned_not_hung() {
    let mut d = ranks(2).remove(0);
    let a = zeros(4, Kind::Float).set_requires_grad(true);
    let plan = Plan::new([("a", &a)], 1024);
    let mut extra = [0.0];
    let e = d.reduce_grads_overlapped(&plan, &mut extra, || Err(tch::TchError::Torch("boom".into()))).unwrap_err();
    assert!(e.to_string().contains("boom"), "{e}");
}
