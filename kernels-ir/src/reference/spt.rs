//! SPT sparse attention (METHODS.md §1): PQ encode, top-k selection, SDDMM, softmax, SpMM and
//! their backward.

use super::tensor::{IndexTensor, Tensor, ieee_cmp};
use crate::pattern::{PqTopK, Selector};

/// Scores beyond ±`CLAMP` are clamped when the pattern's `clamp` flag is set (SPT-proto).
pub const CLAMP: f64 = 10.0;

/// PQ codes of the rows of `x` [N, D] against `codebook` [S, E, d_c]: for each subspace the
/// codeword at the least L1 distance, ties → lower codeword. Returns [N, S].
pub fn pq_encode(x: &Tensor, codebook: &Tensor) -> IndexTensor {
    let (s, e, dc) = (codebook.shape[0], codebook.shape[1], codebook.shape[2]);
    let d = s * dc;
    let n = x.numel() / d.max(1);
    let mut codes = vec![0i64; n * s];
    for row in 0..n {
        for sub in 0..s {
            let xs = &x.data[row * d + sub * dc..row * d + (sub + 1) * dc];
            let mut best = (f64::INFINITY, 0usize);
            for word in 0..e {
                let c = &codebook.data[(sub * e + word) * dc..(sub * e + word + 1) * dc];
                let dist: f64 = xs.iter().zip(c).map(|(a, b)| (a - b).abs()).sum();
                if dist < best.0 {
                    best = (dist, word);
                }
            }
            codes[row * s + sub] = best.1 as i64;
        }
    }
    IndexTensor {
        shape: vec![n, s],
        data: codes,
    }
}

/// The selection score of a (query, key) pair from their codes: pq-match the number of equal
/// subspace codes; pq-adc Σ_s q_s · codebook[s, code_k[s]] from the query vector `qv` [D].
fn pair_score(sel: Selector, (cq, ck): (&[i64], &[i64]), qv: &[f64], codebook: &Tensor) -> f64 {
    let (e, dc) = (codebook.shape[1], codebook.shape[2]);
    match sel {
        Selector::PqMatch => cq.iter().zip(ck).filter(|(a, b)| a == b).count() as f64,
        Selector::PqAdc => ck
            .iter()
            .enumerate()
            .map(|(sub, &word)| {
                let c = &codebook.data[(sub * e + word as usize) * dc..][..dc];
                let qs = &qv[sub * dc..][..dc];
                qs.iter().zip(c).map(|(a, b)| a * b).sum::<f64>()
            })
            .sum(),
    }
}

/// The kept keys of every query: `[B, H, L, topk]`, each row's kept set in ascending key order,
/// padded with −1 where a causal row has fewer than `topk` candidates.
pub fn select(q: &Tensor, k: &Tensor, codebook: &Tensor, p: &PqTopK, topk: usize) -> IndexTensor {
    let (b, h, l, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let s = codebook.shape[0];
    let flat = |t: &Tensor| Tensor {
        shape: vec![b * h * l, d],
        data: t.data.clone(),
    };
    let cq = pq_encode(&flat(q), codebook);
    let ck = pq_encode(&flat(k), codebook);
    let mut out = vec![-1i64; b * h * l * topk];
    let mut scores = vec![0.0f64; l];
    for bh in 0..b * h {
        for i in 0..l {
            let qi = bh * l + i;
            let candidates = if p.causal { i + 1 } else { l };
            for j in 0..candidates {
                let kj = bh * l + j;
                scores[j] = pair_score(
                    p.selector,
                    (&cq.data[qi * s..][..s], &ck.data[kj * s..][..s]),
                    &q.data[qi * d..][..d],
                    codebook,
                );
            }
            let mut order: Vec<usize> = (0..candidates).collect();
            order.sort_by(|&a, &b| ieee_cmp(scores[b], scores[a]).then(a.cmp(&b)));
            order.truncate(topk);
            order.sort_unstable();
            for (slot, j) in order.into_iter().enumerate() {
                out[qi * topk + slot] = j as i64;
            }
        }
    }
    IndexTensor {
        shape: vec![b, h, l, topk],
        data: out,
    }
}

/// Block-granular selection (METHODS.md §7, `block` G > 1): the kept key blocks of every query
/// block, `[B, H, ⌈L/G⌉, kb]` with kb = ⌈topk / G⌉, in ascending block order, then −1. Each
/// block's representative is the mean of its rows, PQ-encoded like a row; scores as in
/// [`select`]; with `causal` the candidates are the blocks c ≤ b and the diagonal is always kept.
pub fn select_blocks(
    q: &Tensor,
    k: &Tensor,
    codebook: &Tensor,
    p: &PqTopK,
    topk: usize,
) -> IndexTensor {
    let (b, h, l, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let s = codebook.shape[0];
    let g = p.block.max(1);
    let (nb, kb) = (p.blocks_of(l), p.kept_blocks(topk));
    let means = |t: &Tensor| {
        let mut m = Tensor::zeros(&[b * h * nb, d]);
        for bh in 0..b * h {
            for blk in 0..nb {
                let rows = blk * g..((blk + 1) * g).min(l);
                let n = rows.len() as f64;
                for i in rows {
                    for t_ in 0..d {
                        m.data[(bh * nb + blk) * d + t_] += t.data[(bh * l + i) * d + t_];
                    }
                }
                for t_ in 0..d {
                    m.data[(bh * nb + blk) * d + t_] /= n;
                }
            }
        }
        m
    };
    let (qm, km) = (means(q), means(k));
    let (cq, ck) = (pq_encode(&qm, codebook), pq_encode(&km, codebook));
    let mut out = vec![-1i64; b * h * nb * kb];
    for bh in 0..b * h {
        for qb in 0..nb {
            let row = bh * nb + qb;
            let score = |c: usize| {
                let kr = bh * nb + c;
                pair_score(
                    p.selector,
                    (&cq.data[row * s..][..s], &ck.data[kr * s..][..s]),
                    &qm.data[row * d..][..d],
                    codebook,
                )
            };
            // Causal: the diagonal is kept first; the rest compete among the blocks below it.
            let (mut kept, candidates, want) = if p.causal {
                (vec![qb], qb, kb - 1)
            } else {
                (Vec::new(), nb, kb)
            };
            let scores: Vec<f64> = (0..candidates).map(score).collect();
            let mut order: Vec<usize> = (0..candidates).collect();
            order.sort_by(|&a, &b| ieee_cmp(scores[b], scores[a]).then(a.cmp(&b)));
            order.truncate(want);
            kept.extend(order);
            kept.sort_unstable();
            for (slot, c) in kept.into_iter().enumerate() {
                out[row * kb + slot] = c as i64;
            }
        }
    }
    IndexTensor {
        shape: vec![b, h, nb, kb],
        data: out,
    }
}

/// The kept keys of every query row under block-granular selection: `[B, H, L, kb·G]`, the
/// keys of the row's query block's kept blocks in order (slot t holds key c·G + t mod G of kept
/// block t / G), −1 where the block slot is empty, the key is past L (a ragged last block) or,
/// with `causal`, after the query.
pub fn expand_blocks(blocks: &IndexTensor, l: usize, g: usize, causal: bool) -> IndexTensor {
    let (b, h, nb, kb) = (
        blocks.shape[0],
        blocks.shape[1],
        blocks.shape[2],
        blocks.shape[3],
    );
    let width = kb * g;
    let mut out = vec![-1i64; b * h * l * width];
    for bh in 0..b * h {
        for i in 0..l {
            let qb = i / g;
            for (slot, &c) in blocks.data[(bh * nb + qb) * kb..][..kb].iter().enumerate() {
                if c < 0 {
                    continue;
                }
                for t in 0..g {
                    let j = c as usize * g + t;
                    if j < l && (!causal || j <= i) {
                        out[(bh * l + i) * width + slot * g + t] = j as i64;
                    }
                }
            }
        }
    }
    IndexTensor {
        shape: vec![b, h, l, width],
        data: out,
    }
}

/// Forward of attention over a given kept set: returns `out` [B,H,L,D] and the probabilities
/// [B,H,L,topk] (0 at empty slots) that backward needs.
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    indices: &IndexTensor,
    clamp: bool,
) -> (Tensor, Tensor) {
    let (b, h, l, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let topk = indices.shape[3];
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = Tensor::zeros(&q.shape);
    let mut probs = Tensor::zeros(&indices.shape);
    for bh in 0..b * h {
        for i in 0..l {
            let row = bh * l + i;
            let qi = &q.data[row * d..(row + 1) * d];
            let slots = &indices.data[row * topk..(row + 1) * topk];
            let mut s = vec![f64::NEG_INFINITY; topk];
            for (slot, &j) in slots.iter().enumerate() {
                if j >= 0 {
                    let kj = &k.data[(bh * l + j as usize) * d..(bh * l + j as usize + 1) * d];
                    let raw = scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>();
                    s[slot] = if clamp { raw.clamp(-CLAMP, CLAMP) } else { raw };
                }
            }
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                continue; // no kept key: the row stays 0
            }
            let exps: Vec<f64> = s
                .iter()
                .map(|&x| {
                    if x == f64::NEG_INFINITY {
                        0.0
                    } else {
                        (x - max).exp()
                    }
                })
                .collect();
            let sum: f64 = exps.iter().sum();
            for (slot, &j) in slots.iter().enumerate() {
                let pij = exps[slot] / sum;
                probs.data[row * topk + slot] = pij;
                if j >= 0 {
                    let vj = &v.data[(bh * l + j as usize) * d..(bh * l + j as usize + 1) * d];
                    for t in 0..d {
                        out.data[row * d + t] += pij * vj[t];
                    }
                }
            }
        }
    }
    (out, probs)
}

/// Backward over a given kept set: `(dq, dk, dv)` from `dout`.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    indices: &IndexTensor,
    dout: &Tensor,
    clamp: bool,
) -> (Tensor, Tensor, Tensor) {
    let (b, h, l, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let topk = indices.shape[3];
    let scale = 1.0 / (d as f64).sqrt();
    let (_, probs) = attention_forward(q, k, v, indices, clamp);
    let mut dq = Tensor::zeros(&q.shape);
    let mut dk = Tensor::zeros(&k.shape);
    let mut dv = Tensor::zeros(&v.shape);
    for bh in 0..b * h {
        for i in 0..l {
            let row = bh * l + i;
            let slots = &indices.data[row * topk..(row + 1) * topk];
            let go = &dout.data[row * d..(row + 1) * d];
            let mut dp = vec![0.0; topk];
            for (slot, &j) in slots.iter().enumerate() {
                if j >= 0 {
                    let kv = (bh * l + j as usize) * d;
                    let pij = probs.data[row * topk + slot];
                    dp[slot] = go.iter().zip(&v.data[kv..kv + d]).map(|(a, b)| a * b).sum();
                    for t in 0..d {
                        dv.data[kv + t] += pij * go[t];
                    }
                }
            }
            let pdp: f64 = (0..topk).map(|s| probs.data[row * topk + s] * dp[s]).sum();
            for (slot, &j) in slots.iter().enumerate() {
                if j < 0 {
                    continue;
                }
                let kv = (bh * l + j as usize) * d;
                let pij = probs.data[row * topk + slot];
                let mut ds = pij * (dp[slot] - pdp);
                if clamp {
                    let raw = scale
                        * q.data[row * d..(row + 1) * d]
                            .iter()
                            .zip(&k.data[kv..kv + d])
                            .map(|(a, b)| a * b)
                            .sum::<f64>();
                    if !(-CLAMP..=CLAMP).contains(&raw) {
                        ds = 0.0;
                    }
                }
                for t in 0..d {
                    dq.data[row * d + t] += scale * ds * k.data[kv + t];
                    dk.data[kv + t] += scale * ds * q.data[row * d + t];
                }
            }
        }
    }
    (dq, dk, dv)
}
