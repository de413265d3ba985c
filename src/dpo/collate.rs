//! Batching preference pairs: TRL's `DataCollatorForPreference` (`truncation_mode =
//! "keep_start"`, `pad_to_multiple_of = None`). The rows of a batch of B pairs are the B
//! prompt + chosen sequences, then the B prompt + rejected ones; each is cut to `max_length`
//! keeping its start, then all are right-padded to the longest.

use tch::Tensor;

use super::data::Pair;

/// One batch of pairs: three `[2B, T]` Int64 CPU tensors, chosen rows `0..B`, rejected rows
/// `B..2B`.
#[derive(Debug)]
pub struct PrefBatch {
    /// Prompt + completion ids, `pad_id` after the end.
    pub input_ids: Tensor,
    /// 1 on the sequence, 0 on padding.
    pub attention_mask: Tensor,
    /// 1 on completion tokens (the ones whose log-probs DPO sums), 0 on prompt and padding.
    pub completion_mask: Tensor,
}

impl PrefBatch {
    /// B, the number of pairs.
    pub fn pairs(&self) -> usize {
        (self.input_ids.size()[0] / 2) as usize
    }
}

/// TRL's `DataCollatorForPreference(pad_token_id = pad_id, max_length)` on `pairs`.
pub fn collate(pairs: &[&Pair], pad_id: i64, max_length: Option<usize>) -> PrefBatch {
    let seqs: Vec<(&[i64], &[i64])> = pairs
        .iter()
        .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
        .chain(pairs.iter().map(|p| (p.prompt.as_slice(), p.rejected.as_slice())))
        .collect();
    let len = |(p, c): &(&[i64], &[i64])| max_length.map_or(p.len() + c.len(), |m| (p.len() + c.len()).min(m));
    let t = seqs.iter().map(len).max().unwrap_or(0);
    let n = seqs.len();
    let (mut ids, mut attention, mut completion) = (vec![pad_id; n * t], vec![0i64; n * t], vec![0i64; n * t]);
    for (row, seq) in seqs.iter().enumerate() {
        let (prompt, answer) = seq;
        let tokens = prompt.iter().map(|&id| (id, 0)).chain(answer.iter().map(|&id| (id, 1)));
        for (j, (id, is_completion)) in tokens.take(len(seq)).enumerate() {
            ids[row * t + j] = id;
            attention[row * t + j] = 1;
            completion[row * t + j] = is_completion;
        }
    }
    let shape = [n as i64, t as i64];
    let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape);
    PrefBatch { input_ids: tensor(&ids), attention_mask: tensor(&attention), completion_mask: tensor(&completion) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Tensor) -> Vec<Vec<i64>> {
        let n = t.size()[0];
        (0..n).map(|i| Vec::<i64>::try_from(t.get(i)).unwrap()).collect()
    }

    #[test]
    fn chosen_rows_first_then_rejected_right_padded_as_trl() {
        // TRL's docstring example of DataCollatorForPreference.
        let a = Pair { prompt: vec![1, 2, 3], chosen: vec![4, 5], rejected: vec![6] };
        let b = Pair { prompt: vec![7, 8], chosen: vec![9], rejected: vec![10, 11] };
        let batch = collate(&[&a, &b], 0, None);
        assert_eq!(batch.pairs(), 2);
        assert_eq!(batch.input_ids.kind(), tch::Kind::Int64);
        assert_eq!(rows(&batch.input_ids), vec![vec![1, 2, 3, 4, 5], vec![7, 8, 9, 0, 0], vec![1, 2, 3, 6, 0], vec![7, 8, 10, 11, 0]]);
        assert_eq!(rows(&batch.attention_mask), vec![vec![1, 1, 1, 1, 1], vec![1, 1, 1, 0, 0], vec![1, 1, 1, 1, 0], vec![1, 1, 1, 1, 0]]);
        assert_eq!(rows(&batch.completion_mask), vec![vec![0, 0, 0, 1, 1], vec![0, 0, 1, 0, 0], vec![0, 0, 0, 1, 0], vec![0, 0, 1, 1, 0]]);

        // keep_start, per sequence; the batch is as long as its longest cut sequence.
        let batch = collate(&[&a, &b], 99, Some(4));
        assert_eq!(rows(&batch.input_ids), vec![vec![1, 2, 3, 4], vec![7, 8, 9, 99], vec![1, 2, 3, 6], vec![7, 8, 10, 11]]);
        assert_eq!(rows(&batch.completion_mask), vec![vec![0, 0, 0, 1], vec![0, 0, 1, 0], vec![0, 0, 0, 1], vec![0, 0, 1, 1]]);
        let batch = collate(&[&b], 0, Some(2));
        assert_eq!(rows(&batch.input_ids), vec![vec![7, 8], vec![7, 8]]);
        assert_eq!(rows(&batch.completion_mask), vec![vec![0, 0], vec![0, 0]]);
    }
}
