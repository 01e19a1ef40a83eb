//! The built-in task: deterministic, learnable sequence classification. Each sequence of
//! `seq_len` tokens carries, among random filler tokens, `classes` marker tokens (ids
//! `0..classes`); its label is the marker that occurs most often (3–6 times; every other marker
//! 0–2 times). Solving it needs counting markers anywhere in the sequence, so the model must
//! aggregate over positions (attention, pooling). Chance is `1/classes`.
//!
//! Real text (a directory of files, JSONL, CSV) is read and tokenised by [`crate::text`] into the
//! same [`Dataset`], with a padding mask.

use kernels_ir::reference::rng::SplitMix64;

/// A set of labelled sequences.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Token ids, `len × seq_len`, row-major.
    pub tokens: Vec<i64>,
    /// Labels, one per sequence.
    pub labels: Vec<i64>,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Which tokens are real (`len × seq_len`, 1) and which are padding (0); empty: every token
    /// is real (the built-in task).
    pub valid: Vec<u8>,
}

/// One batch: token ids [rows, seq_len], labels [rows] and, for padded text, the mask of real
/// tokens [rows, seq_len].
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Token ids, row-major.
    pub tokens: Vec<i64>,
    /// Labels.
    pub labels: Vec<i64>,
    /// 1 for a real token, 0 for padding; None: no padding.
    pub valid: Option<Vec<u8>>,
}

impl Batch {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Rows `range` of this batch (a replica's slice).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Batch {
        let cols = self.tokens.len() / self.rows().max(1);
        let cut = |v: &[u8]| v[range.start * cols..range.end * cols].to_vec();
        Batch {
            tokens: self.tokens[range.start * cols..range.end * cols].to_vec(),
            labels: self.labels[range.clone()].to_vec(),
            valid: self.valid.as_deref().map(cut),
        }
    }
}

impl Dataset {
    /// `n` sequences drawn from `seed` (the same seed gives the same data everywhere). The
    /// vocabulary must hold the markers plus filler (`vocab > classes`), and a sequence must fit
    /// the markers (`seq_len ≥ 6 + 2·(classes − 1)`).
    pub fn generate(n: usize, seq_len: usize, vocab: usize, classes: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut tokens = Vec::with_capacity(n * seq_len);
        let mut labels = Vec::with_capacity(n);
        let filler = vocab.saturating_sub(classes).max(1);
        for _ in 0..n {
            let label = rng.below(classes);
            let mut row: Vec<i64> = (0..seq_len)
                .map(|_| (classes + rng.below(filler)) as i64)
                .collect();
            let mut free: Vec<usize> = (0..seq_len).collect();
            for c in 0..classes {
                let count = if c == label {
                    3 + rng.below(4)
                } else {
                    rng.below(3)
                };
                for _ in 0..count.min(free.len()) {
                    let at = free.swap_remove(rng.below(free.len()));
                    row[at] = c as i64;
                }
            }
            tokens.extend(row);
            labels.push(label as i64);
        }
        Self {
            tokens,
            labels,
            seq_len,
            valid: Vec::new(),
        }
    }

    fn rows(&self, idx: impl IntoIterator<Item = usize>) -> Batch {
        let mut b = Batch {
            tokens: Vec::new(),
            labels: Vec::new(),
            valid: (!self.valid.is_empty()).then(Vec::new),
        };
        for i in idx {
            let span = i * self.seq_len..(i + 1) * self.seq_len;
            b.tokens.extend_from_slice(&self.tokens[span.clone()]);
            b.labels.push(self.labels[i]);
            if let Some(v) = b.valid.as_mut() {
                v.extend_from_slice(&self.valid[span]);
            }
        }
        b
    }

    /// The samples `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let b = self.rows(idx.iter().copied());
        Dataset {
            tokens: b.tokens,
            labels: b.labels,
            seq_len: self.seq_len,
            valid: b.valid.unwrap_or_default(),
        }
    }

    /// Sequences.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The batches of one epoch: sample order shuffled by `(seed, epoch)`, the last partial
    /// batch dropped (every step sees the same shapes).
    pub fn batches(&self, batch: usize, seed: u64, epoch: usize) -> Vec<Batch> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        let mut rng = SplitMix64::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order
            .chunks_exact(batch.max(1))
            .map(|idx| self.rows(idx.iter().copied()))
            .collect()
    }

    /// The samples in order, in batches of at most `batch` (evaluation).
    pub fn in_order(&self, batch: usize) -> Vec<Batch> {
        (0..self.len())
            .step_by(batch.max(1))
            .map(|start| self.rows(start..(start + batch.max(1)).min(self.len())))
            .collect()
    }
}
