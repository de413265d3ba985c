//! The masked-LM collator: transformers' `DataCollatorForLanguageModeling.torch_mask_tokens`
//! (5.24) with a seeded, per-example random stream instead of torch's global generator.
//!
//! Each token that is not special (by id: the tokenizer's special tokens, padding among them,
//! as `get_special_tokens_mask(already_has_special_tokens=True)` decides) is chosen with
//! probability `mlm_probability`; its label is its id, every other label -100. A chosen token
//! becomes the mask token with probability `mask_replace_prob`; otherwise it becomes a random
//! id (uniform over `0..vocab_size`, which may be the token itself or a special token, as in
//! transformers) with probability `random_replace_prob / (1 - mask_replace_prob)` — so
//! `random_replace_prob` of all chosen tokens — and otherwise stays.
//!
//! The draws are a pure function of the seed the caller passes, [`example_seed`]`(run seed,
//! epoch, example index)`: an example is masked the same on 1 or N ranks and after a resume,
//! differently in each epoch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::config::MaskedLmTaskConfig;
use crate::sft::IGNORE;

/// The seed of one example's mask: a hash (splitmix64 steps) of the run seed, the epoch and
/// the global example index.
pub fn example_seed(seed: u64, epoch: u64, index: u64) -> u64 {
    splitmix(splitmix(splitmix(seed) ^ epoch) ^ index)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Masks one example: `(inputs, labels)`, both `ids`' length. `special[id]` says whether token
/// `id` is special (an id beyond the table is not); see the module docs.
pub fn mask(ids: &[i64], special: &[bool], cfg: &MaskedLmTaskConfig, mask_id: i64, vocab_size: usize, seed: u64) -> (Vec<i64>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let random_given_not_masked = if cfg.mask_replace_prob >= 1.0 || cfg.random_replace_prob <= 0.0 {
        0.0
    } else {
        cfg.random_replace_prob / (1.0 - cfg.mask_replace_prob)
    };
    let (mut inputs, mut labels) = (ids.to_vec(), vec![IGNORE; ids.len()]);
    for (i, &id) in ids.iter().enumerate() {
        let is_special = usize::try_from(id).ok().and_then(|u| special.get(u)).copied().unwrap_or(false);
        if is_special || rng.random::<f64>() >= cfg.mlm_probability {
            continue;
        }
        labels[i] = id;
        if rng.random::<f64>() < cfg.mask_replace_prob {
            inputs[i] = mask_id;
        } else if rng.random::<f64>() < random_given_not_masked {
            inputs[i] = rng.random_range(0..vocab_size.max(1)) as i64;
        }
    }
    (inputs, labels)
}

/// Right-pads masked examples `(inputs, labels)` to the longest: `input_ids` (B, T) Int64
/// (`pad_id` on padding), `attention_mask` (B, T) Int64 1/0, `labels` (B, T) Int64 (-100 on
/// padding).
pub fn collate(examples: &[(Vec<i64>, Vec<i64>)], pad_id: i64) -> (Tensor, Tensor, Tensor) {
    let b = examples.len();
    let t = examples.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let (mut ids, mut attn, mut labels) = (vec![pad_id; b * t], vec![0i64; b * t], vec![IGNORE; b * t]);
    for (row, (inputs, labs)) in examples.iter().enumerate() {
        let base = row * t;
        ids[base..base + inputs.len()].copy_from_slice(inputs);
        attn[base..base + inputs.len()].fill(1);
        labels[base..base + labs.len()].copy_from_slice(labs);
    }
    let shape = [b as i64, t as i64];
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&attn).view(shape), Tensor::from_slice(&labels).view(shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: i64 = 4;
    const VOCAB: usize = 50;

    /// Ids 0..5 special ([PAD] [UNK] [CLS] [SEP] [MASK]).
    fn special() -> Vec<bool> {
        (0..VOCAB).map(|i| i < 5).collect()
    }

    fn example(n: usize) -> Vec<i64> {
        let mut ids = vec![2];
        ids.extend((0..n).map(|i| 5 + (i * 7 % 45) as i64));
        ids.push(3);
        ids
    }

    #[test]
    fn masks_are_a_function_of_seed_epoch_and_index() {
        let (cfg, ids, sp) = (MaskedLmTaskConfig::default(), example(200), special());
        let run = |epoch, index| mask(&ids, &sp, &cfg, MASK, VOCAB, example_seed(7, epoch, index));
        assert_eq!(run(0, 3), run(0, 3));
        assert_ne!(run(0, 3), run(1, 3), "another epoch, another mask");
        assert_ne!(run(0, 3), run(0, 4), "another example, another mask");
        assert_ne!(run(0, 3), mask(&ids, &sp, &cfg, MASK, VOCAB, example_seed(8, 0, 3)), "another run seed");
        assert_ne!(example_seed(0, 1, 0), example_seed(0, 0, 1));
    }

    #[test]
    fn labels_only_at_chosen_positions_and_never_on_special_tokens() {
        let cfg = MaskedLmTaskConfig { mlm_probability: 0.5, ..Default::default() };
        let sp = special();
        // Special ids inside the sequence too (packed blocks hold [SEP] [CLS] in the middle).
        let mut ids = example(300);
        ids.extend([3, 2, 0, 0, 1]);
        ids.extend(example(300));
        let (mut chosen, mut changed) = (0, 0);
        for index in 0..20 {
            let (inputs, labels) = mask(&ids, &sp, &cfg, MASK, VOCAB, example_seed(1, 0, index));
            assert_eq!((inputs.len(), labels.len()), (ids.len(), ids.len()));
            for ((&id, &input), &label) in ids.iter().zip(&inputs).zip(&labels) {
                if sp[id as usize] {
                    assert_eq!((input, label), (id, IGNORE), "special token {id} is never chosen");
                } else if label == IGNORE {
                    assert_eq!(input, id, "an unchosen token is left as it is");
                } else {
                    assert_eq!(label, id, "the label is the original id");
                    chosen += 1;
                    changed += (input != id) as usize;
                }
            }
        }
        assert!(chosen > 0 && changed > 0);
    }

    #[test]
    fn replacement_fractions_at_their_bounds() {
        let (ids, sp) = (example(2000), special());
        let all_mask = MaskedLmTaskConfig { mlm_probability: 0.5, mask_replace_prob: 1.0, random_replace_prob: 0.0 };
        let (inputs, labels) = mask(&ids, &sp, &all_mask, MASK, VOCAB, 5);
        assert!(labels.iter().zip(&inputs).all(|(&l, &i)| (l == IGNORE) != (i == MASK)), "every chosen token, and only those, is [MASK]");
        let keep = MaskedLmTaskConfig { mlm_probability: 0.5, mask_replace_prob: 0.0, random_replace_prob: 0.0 };
        let (inputs, labels) = mask(&ids, &sp, &keep, MASK, VOCAB, 5);
        assert_eq!(inputs, ids);
        assert!(labels.iter().any(|&l| l != IGNORE));
        let random = MaskedLmTaskConfig { mlm_probability: 0.5, mask_replace_prob: 0.0, random_replace_prob: 1.0 };
        let (inputs, labels) = mask(&ids, &sp, &random, MASK, VOCAB, 5);
        let chosen = labels.iter().filter(|&&l| l != IGNORE).count();
        let same = labels.iter().zip(&inputs).filter(|(&l, &i)| l != IGNORE && l == i).count();
        assert!(same * 20 < chosen, "random ids rarely equal the original: {same} of {chosen}");
        assert!(inputs.iter().all(|&i| (0..VOCAB as i64).contains(&i)));
    }

    #[test]
    fn collate_right_pads_with_ignored_labels() {
        let a = (vec![2, 9, 4, 3], vec![-100, -100, 11, -100]);
        let b = (vec![2, 3], vec![-100, -100]);
        let (ids, attn, labels) = collate(&[a, b], 0);
        assert_eq!(ids.size(), vec![2, 4]);
        assert_eq!(Vec::<i64>::try_from(ids.view(-1)).unwrap(), vec![2, 9, 4, 3, 2, 3, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(attn.view(-1)).unwrap(), vec![1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(labels.view(-1)).unwrap(), vec![-100, -100, 11, -100, -100, -100, -100, -100]);
    }
}
