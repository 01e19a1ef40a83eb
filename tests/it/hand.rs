//! Small cases worked out by hand from METHODS.md, one or more per op, each exercising the
//! tie-breaking and empty-slot rules.

use kernels_ir::pattern::{MonarchShape, PqTopK, Routed, SaraSelect, Selector, TopK};
use kernels_ir::reference::{IndexTensor, Tensor, cbm, dense, monarch, nm, pst, routed, sara, spt};

fn t(shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * y.abs().max(1.0),
            "element {i}: {x} vs {y}"
        );
    }
}

/// S = 2 subspaces of d_c = 2, E = 2 codewords.
fn codebook() -> Tensor {
    // subspace 0: e0 = (0, 0), e1 = (1, 1); subspace 1: e0 = (0, 1), e1 = (1, 0)
    t(&[2, 2, 2], &[0., 0., 1., 1., 0., 1., 1., 0.])
}

#[test]
fn pq_encode_takes_l1_argmin_with_ties_to_lower_codeword() {
    // row 0: (0.9, 0.8 | 0.1, 0.9): sub0 L1 to e0 = 1.7, to e1 = 0.3 → 1; sub1 to e0 = 0.2, e1 = 1.8 → 0
    // row 1: (0.5, 0.5 | 0.5, 0.5): both subspaces tie at 1.0 → 0, 0
    // row 2: (0.5, 0.6 | 1.0, 0.0): sub0 e0 = 1.1, e1 = 0.9 → 1; sub1 e0 = 2, e1 = 0 → 1
    let x = t(
        &[3, 4],
        &[0.9, 0.8, 0.1, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 1.0, 0.0],
    );
    let codes = spt::pq_encode(&x, &codebook());
    assert_eq!(codes.data, vec![1, 0, 0, 0, 1, 1]);
}

/// Four keys/queries whose codes are q = k = [(1,0), (0,0), (1,1), (1,0)].
fn qk() -> Tensor {
    t(
        &[1, 1, 4, 4],
        &[
            1., 1., 0., 1., 0., 0., 0., 1., 1., 1., 1., 0., 1., 1., 0., 1.,
        ],
    )
}

#[test]
fn pq_match_keeps_most_matching_keys_ties_to_lower_index() {
    let q = qk();
    let p = PqTopK {
        topk: TopK::Fixed(2),
        sub_dim: 2,
        codewords: 2,
        ..PqTopK::default()
    };
    let idx = spt::select(&q, &q, &codebook(), &p, 2);
    // matches (row i, key j) = number of equal codes:
    // i0 (1,0): j0 2, j1 1, j2 1, j3 2 → {0, 3}
    // i1 (0,0): j0 1, j1 2, j2 0, j3 1 → 1, then tie j0/j3 → 0 → {0, 1}
    // i2 (1,1): j0 1, j1 0, j2 2, j3 1 → 2, then tie j0/j3 → 0 → {0, 2}
    // i3 (1,0): like i0 → {0, 3}
    assert_eq!(idx.data, vec![0, 3, 0, 1, 0, 2, 0, 3]);
}

#[test]
fn causal_rows_with_fewer_candidates_pad_with_minus_one() {
    let q = qk();
    let p = PqTopK {
        topk: TopK::Fixed(3),
        causal: true,
        sub_dim: 2,
        codewords: 2,
        ..PqTopK::default()
    };
    let idx = spt::select(&q, &q, &codebook(), &p, 3);
    // i0: only j0; i1: j0, j1; i2: j0..j2 all kept; i3: j0 2, j1 1, j2 1, j3 2 → {0, 3} + tie j1/j2 → j1
    assert_eq!(idx.data, vec![0, -1, -1, 0, 1, -1, 0, 1, 2, 0, 1, 3]);
}

/// Block-granular selection (METHODS.md §7), worked with G = 2 (the rule is the same for the
/// G ≥ 16 the verifier admits): L = 5, so the last block is a single row.
#[test]
fn block_selection_scores_block_means_and_keeps_the_diagonal() {
    // Blocks of rows: B0 = {(1,1,0,1), (1,1,0,1)} → mean codes (1,0); B1 = {(0,0,0,0),
    // (0,0,0,2)} → mean (0,0,0,1) → codes (0,0); B2 = {(1,1,1,0)} → codes (1,1).
    let x = t(
        &[1, 1, 5, 4],
        &[
            1., 1., 0., 1., 1., 1., 0., 1., 0., 0., 0., 0., 0., 0., 0., 2., 1., 1., 1., 0.,
        ],
    );
    let p = PqTopK {
        topk: TopK::Fixed(3),
        sub_dim: 2,
        codewords: 2,
        block: 2,
        ..PqTopK::default()
    };
    // kb = ⌈3 / 2⌉ = 2. Matches (query block b, key block c): b0: 2 1 1; b1: 1 2 0; b2: 1 0 2.
    // b0 → c0, then the tie c1/c2 → c1; b1 → c1, c0; b2 → c2, c0. Ascending order.
    let blocks = spt::select_blocks(&x, &x, &codebook(), &p, 3);
    assert_eq!(blocks.shape, vec![1, 1, 3, 2]);
    assert_eq!(blocks.data, vec![0, 1, 0, 1, 0, 2]);
    // Causal: the diagonal first, the other kb − 1 = 1 from the blocks before it (b0 has none).
    let causal = PqTopK { causal: true, ..p };
    let blocks = spt::select_blocks(&x, &x, &codebook(), &causal, 3);
    assert_eq!(blocks.data, vec![0, -1, 0, 1, 0, 2]);
    // Each row's keys: kb·G = 4 slots, −1 past the query (causal), past L or in an empty slot.
    let keys = spt::expand_blocks(&blocks, 5, 2, true);
    assert_eq!(keys.shape, vec![1, 1, 5, 4]);
    #[rustfmt::skip]
    assert_eq!(keys.data, vec![
        0, -1, -1, -1,
        0, 1, -1, -1,
        0, 1, 2, -1,
        0, 1, 2, 3,
        0, 1, 4, -1,
    ]);
}

#[test]
fn pq_adc_scores_query_against_key_codewords() {
    // one query (1, 2 | 3, -1); keys coded (1,0) and (0,1):
    // key0: sub0 e1 = (1,1) → 1+2 = 3; sub1 e0 = (0,1) → -1 ; total 2
    // key1: sub0 e0 = (0,0) → 0; sub1 e1 = (1,0) → 3; total 3 → key1 first
    let q = t(&[1, 1, 2, 4], &[1., 2., 3., -1., 0., 0., 0., 0.]);
    let k = t(&[1, 1, 2, 4], &[1., 1., 0., 1., 0., 0., 1., 0.]);
    let p = PqTopK {
        topk: TopK::Fixed(1),
        selector: Selector::PqAdc,
        sub_dim: 2,
        codewords: 2,
        ..PqTopK::default()
    };
    let idx = spt::select(&q, &k, &codebook(), &p, 1);
    assert_eq!(idx.data[0], 1);
}

#[test]
fn attention_over_kept_set_is_softmax_of_scaled_scores() {
    // D = 4 → scale 1/2. q0 = (2,0,0,0); k0 = (1,0,0,0) → s = 1; k1 = (0,1,0,0) → s = 0.
    let k = t(
        &[1, 1, 3, 4],
        &[1., 0., 0., 0., 0., 1., 0., 0., 5., 5., 5., 5.],
    );
    let v = t(
        &[1, 1, 3, 4],
        &[1., 0., 0., 0., 0., 1., 0., 0., 9., 9., 9., 9.],
    );
    // Row 0 keeps keys 0 and 1 (slot 2 empty); rows 1 and 2 keep one key each.
    let q3 = t(
        &[1, 1, 3, 4],
        &[2., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.],
    );
    let idx = IndexTensor::new(vec![1, 1, 3, 3], vec![0, 1, -1, 0, -1, -1, 2, -1, -1]).unwrap();
    let (out, probs) = spt::attention_forward(&q3, &k, &v, &idx, false);
    let e = std::f64::consts::E;
    let (p0, p1) = (e / (e + 1.0), 1.0 / (e + 1.0));
    close(&probs.data[..3], &[p0, p1, 0.0]);
    close(&out.data[..4], &[p0, p1, 0.0, 0.0]);
    // rows 1 and 2 keep one key each: probability 1, output = that value row
    close(&out.data[4..8], &[1., 0., 0., 0.]);
    close(&out.data[8..12], &[9., 9., 9., 9.]);
    // clamp: s = 0.5·(2·100) = 100 → clamped to 10 against s = 0 → p = e^10/(e^10 + 1)
    let kc = t(
        &[1, 1, 3, 4],
        &[100., 0., 0., 0., 0., 1., 0., 0., 5., 5., 5., 5.],
    );
    let (_, pc) = spt::attention_forward(&q3, &kc, &v, &idx, true);
    let e10 = 10f64.exp();
    close(&pc.data[..2], &[e10 / (e10 + 1.0), 1.0 / (e10 + 1.0)]);
}

#[test]
fn routed_ffn_one_token_by_hand() {
    // d_model 1, d_ff 2, two blocks of 1, top 1, sigmoid router, gate output, scale 2, ReLU.
    // x = 1; router logits (0.5, -0.5) → g = (σ(.5), σ(-.5)) → block 0 kept.
    // h0 = relu(3·1 + 1) = 4; y = b2 + 2·σ(.5)·4·w2[0,0] = 0.5 + 8σ(.5)·1.5
    let x = t(&[1, 1], &[1.0]);
    let (w1, b1) = (t(&[2, 1], &[3.0, -7.0]), t(&[2], &[1.0, 0.0]));
    let (w2, b2) = (t(&[1, 2], &[1.5, 100.0]), t(&[1], &[0.5]));
    let (wr, br) = (t(&[2, 1], &[0.25, -0.25]), t(&[2], &[0.25, -0.25]));
    let w = routed::RoutedWeights {
        w1: &w1,
        b1: &b1,
        w2: &w2,
        b2: &b2,
        wr: &wr,
        br: &br,
    };
    let r = Routed {
        blocks: 2,
        top: 1,
        ..Routed::default()
    };
    let g = routed::gates(&x, &w, &r);
    let blocks = routed::route(&g, 1);
    assert_eq!(blocks.data, vec![0]);
    let s = 1.0 / (1.0 + (-0.5f64).exp());
    let y = routed::forward(&x, &w, &blocks, &r);
    close(&y.data, &[0.5 + 8.0 * s * 1.5]);
    // Equal router logits: ties go to the lower block.
    let wr0 = t(&[2, 1], &[0.0, 0.0]);
    let br0 = t(&[2], &[0.0, 0.0]);
    let w0 = routed::RoutedWeights {
        wr: &wr0,
        br: &br0,
        ..w
    };
    assert_eq!(routed::route(&routed::gates(&x, &w0, &r), 1).data, vec![0]);
}

#[test]
fn monarch_two_by_two_by_hand() {
    // k = l = 2, q = p = s = r = 1: n = 2. u = (a·x0, b·x1); the (k q) → (r l) read gives
    // u as [r=1, l=2]: y[s·l + l_i] = w2[l_i, 0, 0]·u[l_i] → y = (c·a·x0, d·b·x1).
    let m = MonarchShape {
        k: 2,
        q: 1,
        p: 1,
        l: 2,
        s: 1,
        r: 1,
    };
    let x = t(&[1, 2], &[3.0, 5.0]);
    let w1 = t(&[2, 1, 1], &[2.0, 7.0]);
    let w2 = t(&[2, 1, 1], &[11.0, 13.0]);
    close(&monarch::forward(&x, &w1, &w2, &m).data, &[66.0, 455.0]);
    // k = 1, q = 2, p = 1, l = 2, s = 1, r = 1: u = (a x, b x) read as [r=1, l=2]: y = (c a x, d b x)
    let m = MonarchShape {
        k: 1,
        q: 2,
        p: 1,
        l: 2,
        s: 1,
        r: 1,
    };
    let x = t(&[1, 1], &[3.0]);
    let w1 = t(&[1, 2, 1], &[2.0, 7.0]);
    close(&monarch::forward(&x, &w1, &w2, &m).data, &[66.0, 273.0]);
}

#[test]
fn sara_ratio_ties_go_to_lower_flat_index_and_threshold_is_strict() {
    let w = t(&[2, 2], &[0.1, -0.1, 0.05, 0.2]);
    assert_eq!(sara::mask(&w, SaraSelect::Ratio(0.5)), vec![0, 2]);
    assert_eq!(sara::mask(&w, SaraSelect::Threshold(0.1)), vec![2]);
    // y = x·W_effᵀ + b with v replacing the masked weights
    let x = t(&[1, 2], &[1.0, 2.0]);
    let b = t(&[2], &[0.0, 1.0]);
    let y = sara::forward(&x, &w, &b, &[0, 2], &[1.0, 3.0]);
    // W_eff = [[1, -0.1], [3, 0.2]] → y = (1 - 0.2, 3 + 0.4 + 1)
    close(&y.data, &[0.8, 4.4]);
    let dy = t(&[1, 2], &[1.0, -1.0]);
    let (dx, dv, db) = sara::backward(&x, &w, &[0, 2], &[1.0, 3.0], &dy);
    close(&dv.data, &[1.0, -1.0]); // dy[0]·x[0], dy[1]·x[0]
    close(&dx.data, &[1.0 - 3.0, -0.1 - 0.2]);
    close(&db.data, &[1.0, -1.0]);
}

#[test]
fn nm_keeps_largest_magnitudes_per_group_ties_to_lower_column() {
    // Two rows of two groups of 4; 2:4 keeps the two largest |w| of each group.
    let w = t(
        &[2, 8],
        &[
            0.1, -0.9, 0.5, 0.2, /* | */ 0.3, 0.3, -0.3, 0.1, //
            0.0, 0.0, 0.0, 0.0, /* | */ -1.0, 2.0, 0.5, -2.0,
        ],
    );
    // Group 0: |−0.9|, 0.5 → columns 1, 2. Group 1: three ties at 0.3 → the lower columns 4, 5.
    // Group 2: all zero → columns 8, 9. Group 3: |2.0| = |−2.0| → 13, 15.
    assert_eq!(nm::mask(&w, 2, 4), vec![1, 2, 4, 5, 8, 9, 13, 15]);
    // 1:2 over one row: the larger of each pair, the first on a tie.
    let w1 = t(&[1, 4], &[1.0, -1.0, 0.0, 3.0]);
    assert_eq!(nm::mask(&w1, 1, 2), vec![0, 3]);
    // W_eff keeps v at the mask and is zero elsewhere: with x = [1, 2, 3, 4], v = [10, 20],
    // y = 10·1 + 20·4 + b.
    let x = t(&[1, 4], &[1.0, 2.0, 3.0, 4.0]);
    let b = t(&[1], &[0.5]);
    let y = nm::forward(&x, &w1, &b, &[0, 3], &[10.0, 20.0]);
    close(&y.data, &[90.5]);
    let dy = t(&[1, 1], &[2.0]);
    let (dx, dv, db) = nm::backward(&x, &w1, &[0, 3], &[10.0, 20.0], &dy);
    close(&dx.data, &[20.0, 0.0, 0.0, 40.0]); // dy·W_eff
    close(&dv.data, &[2.0, 8.0]); // dy·x at the kept columns only
    close(&db.data, &[2.0]);
}

#[test]
fn pst_mask_zeroes_lowest_scores_ties_to_lower_flat_index() {
    let s = t(&[2, 3], &[0.3, 0.1, 0.1, 0.2, 0.1, 0.9]);
    // ⌊6·0.5⌋ = 3 zeros: the three 0.1s at 1, 2, 4
    assert_eq!(pst::mask(&s, 0.5).data, vec![1., 0., 0., 1., 0., 1.]);
    // ⌊6·0.4⌋ = 2 zeros: 0.1 at 1 and 2 (lower indices win the tie)
    assert_eq!(pst::mask(&s, 0.4).data, vec![1., 0., 0., 1., 1., 1.]);
    assert_eq!(pst::mask(&s, 0.0).data, vec![1.0; 6]);
}

#[test]
fn pst_score_by_hand() {
    // 1×2 weight, rank 1: W' = W + U·V, S = |W'| + A·B + R + C
    let w = t(&[1, 2], &[1.0, -2.0]);
    let (u, v) = (t(&[1, 1], &[2.0]), t(&[1, 2], &[0.5, 0.25]));
    let (ma, mb) = (t(&[1, 1], &[1.0]), t(&[1, 2], &[0.1, 0.2]));
    let (mr, mc) = (t(&[1], &[0.01]), t(&[2], &[0.0, 1.0]));
    let pw = pst::PstWeights {
        w: &w,
        u: &u,
        v: &v,
        ma: &ma,
        mb: &mb,
        mr: &mr,
        mc: &mc,
    };
    let (wp, s) = pst::weight_and_score(&pw, &kernels_ir::pattern::Pst::default());
    close(&wp.data, &[2.0, -1.5]);
    close(&s.data, &[2.0 + 0.1 + 0.01, 1.5 + 0.2 + 0.01 + 1.0]);
}

#[test]
fn cbm_keeps_topk_of_z_plus_noise_ties_to_lower_concept() {
    // wc = I → z = x
    let x = t(&[1, 4], &[1.0, 3.0, 3.0, 2.0]);
    let wc = t(
        &[4, 4],
        &[
            1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1.,
        ],
    );
    let wh = t(&[1, 4], &[1.0, 10.0, 100.0, 1000.0]);
    let (z, keep, logits) = cbm::forward(&x, &wc, &wh, None, 2);
    close(&z.data, &x.data);
    assert_eq!(keep.data, vec![0., 1., 1., 0.]);
    close(&logits.data, &[330.0]);
    // noise lifts concept 3 above both 3s
    let noise = t(&[1, 4], &[0.0, 0.0, 0.0, 1.5]);
    let (_, keep, logits) = cbm::forward(&x, &wc, &wh, Some(&noise), 2);
    assert_eq!(keep.data, vec![0., 1., 0., 1.]);
    close(&logits.data, &[30.0 + 2000.0]);
    // topk 0: dense head
    let (_, _, logits) = cbm::forward(&x, &wc, &wh, None, 0);
    close(&logits.data, &[1.0 + 30.0 + 300.0 + 2000.0]);
}

#[test]
fn dense_linear_by_hand() {
    let x = t(&[1, 2], &[1.0, 2.0]);
    let w = t(&[1, 2], &[3.0, 4.0]);
    let b = t(&[1], &[0.5]);
    close(&dense::linear_forward(&x, &w, &b).data, &[11.5]);
    let (dx, dw, db) = dense::linear_backward(&x, &w, &t(&[1, 1], &[2.0]));
    close(&dx.data, &[6.0, 8.0]);
    close(&dw.data, &[2.0, 4.0]);
    close(&db.data, &[2.0]);
}

#[test]
fn monarch_projection_of_a_two_by_two_by_hand() {
    // k = l = 2, q = p = s = r = 1: block pair (ki, li) couples through m = ki only when
    // m mod 2 = li, so only the diagonal of W is representable; off-diagonals are dropped and
    // each diagonal entry splits as √|a|·(±√|a|).
    let m = MonarchShape {
        k: 2,
        q: 1,
        p: 1,
        l: 2,
        s: 1,
        r: 1,
    };
    let w = t(&[2, 2], &[3.0, 5.0, 7.0, -2.0]);
    let (w1, w2) = monarch::project(&w, &m).unwrap();
    close(
        &monarch::to_dense(&w1, &w2, &m).data,
        &[3.0, 0.0, 0.0, -2.0],
    );
    close(
        &[
            w1.data[0].abs(),
            w2.data[0].abs(),
            w1.data[1].abs(),
            w2.data[1].abs(),
        ],
        &[3f64.sqrt(), 3f64.sqrt(), 2f64.sqrt(), 2f64.sqrt()],
    );
}

#[test]
fn block_diagonal_by_hand() {
    // two blocks of 1×2: y0 = w0·x[0..2], y1 = w1·x[2..4]
    let x = t(&[1, 4], &[1.0, 2.0, 3.0, 4.0]);
    let w = t(&[2, 1, 2], &[1.0, -1.0, 0.5, 2.0]);
    close(&monarch::block_diag_forward(&x, &w).data, &[-1.0, 9.5]);
    let (dx, dw) = monarch::block_diag_backward(&x, &w, &t(&[1, 2], &[1.0, 2.0]));
    close(&dx.data, &[1.0, -1.0, 1.0, 4.0]);
    close(&dw.data, &[1.0, 2.0, 6.0, 8.0]);
}
