//! The deterministic parallel primitives (`sparsecube_codegen::prim`, and the selection built
//! on them) against host implementations on lavapipe: sizes from 0 and 1 to many tiles, more
//! cubes than one grid axis holds, all-equal keys, many and empty segments; every result
//! compared exactly (integers) or to an f64 sum, and every run repeated for identical bits.

use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::{DType, OpKind};
use proptest::prelude::*;
use sparsecube_codegen::plan::{Arg, Elem, Float, LaunchPlan, Pass, PlanBuilder, Role};
use sparsecube_codegen::prim::{self, Grouped};
use sparsecube_codegen::select::{self, Keep, kernels::TopkConfig};
use sparsecube_runtime::Device;
use sparsecube_runtime::exec::run_words;
use sparsecube_tests::{proptest_config, wgpu_or_skip};
use std::collections::BTreeMap;

fn builder(what: &str) -> PlanBuilder {
    PlanBuilder::named(
        OpKind::RoutedFfn,
        &format!("primitive {what}"),
        Pass::Forward,
        DType::F32,
    )
}

/// Runs `plan` twice with `inputs` and checks both runs return identical words.
fn run_twice(
    device: &Device,
    plan: &LaunchPlan,
    inputs: &[(&str, Vec<u32>)],
) -> BTreeMap<String, Vec<u32>> {
    let inputs: BTreeMap<String, Vec<u32>> = inputs
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    let first = run_words(device, plan, &inputs).unwrap_or_else(|e| panic!("{}: {e}", plan.label));
    let second = run_words(device, plan, &inputs).unwrap();
    assert_eq!(first, second, "{}: two runs differ", plan.label);
    first
}

/// Segment lengths worth testing: empty, one, around a tile, several tiles, random.
fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1usize),
        Just(1023usize),
        Just(1024usize),
        Just(1025usize),
        Just(4097usize),
        2usize..3000,
    ]
}

fn words(rng: &mut SplitMix64, n: usize, below: u64, all_equal: bool) -> Vec<u32> {
    let v = rng.next_u64() % below;
    (0..n)
        .map(|_| {
            if all_equal {
                v as u32
            } else {
                (rng.next_u64() % below) as u32
            }
        })
        .collect()
}

fn scan_on(
    device: &Device,
    data: &[u32],
    segments: usize,
    seg_len: usize,
    inclusive: bool,
) -> Vec<u32> {
    let mut b = builder("scan");
    let input = b.input("input", Elem::U32, &[segments * seg_len]);
    let output = b.output("output", Elem::U32, &[segments * seg_len]);
    prim::scan(&mut b, "scan", input, output, segments, seg_len, inclusive);
    let out = run_twice(device, &b.finish(), &[("input", data.to_vec())]);
    out["output"].clone()
}

fn host_scan(data: &[u32], seg_len: usize, inclusive: bool) -> Vec<u32> {
    let mut out = Vec::with_capacity(data.len());
    for seg in data.chunks(seg_len.max(1)) {
        let mut running = 0u32;
        for &x in seg {
            if inclusive {
                running += x;
                out.push(running);
            } else {
                out.push(running);
                running += x;
            }
        }
    }
    out
}

/// The stable grouping of `src` (segments of `seg_len`, bins per segment, the last one for
/// negative entries): (values, offsets, rank_of) with values the in-segment position.
fn host_group(src: &[i32], seg_len: usize, bins: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let segments = src.len().checked_div(seg_len).unwrap_or(0);
    let mut values = Vec::new();
    let mut offsets = Vec::new();
    let mut rank_of = vec![0u32; src.len()];
    for s in 0..segments {
        let seg = &src[s * seg_len..(s + 1) * seg_len];
        let bin = |v: i32| if v < 0 { bins - 1 } else { v as usize };
        let mut order: Vec<usize> = (0..seg_len).collect();
        order.sort_by_key(|&p| bin(seg[p]));
        for (i, &p) in order.iter().enumerate() {
            values.push(p as u32);
            rank_of[s * seg_len + p] = (s * seg_len + i) as u32;
        }
        let mut count = vec![0u32; bins];
        for &v in seg {
            count[bin(v)] += 1;
        }
        let mut running = 0u32;
        for c in count {
            offsets.push(running);
            running += c;
        }
    }
    (values, offsets, rank_of)
}

proptest! {
    #![proptest_config(proptest_config(24))]

    /// Exclusive and inclusive segmented scans equal the host's prefix sums.
    #[test]
    fn scan_equals_the_host(
        segments in 0usize..4, seg_len in lengths(), inclusive: bool, all_equal: bool, seed: u64,
    ) {
        let Some(device) = wgpu_or_skip("scan") else { return Ok(()); };
        let mut rng = SplitMix64::new(seed);
        let data = words(&mut rng, segments * seg_len, 1000, all_equal);
        let got = scan_on(&device, &data, segments, seg_len, inclusive);
        prop_assert_eq!(got, host_scan(&data, seg_len, inclusive));
    }

    /// Segment totals equal the host's sums.
    #[test]
    fn segment_sums_equal_the_host(
        segments in 1usize..300, seg_len in lengths(), seed: u64,
    ) {
        let Some(device) = wgpu_or_skip("segment sums") else { return Ok(()); };
        let mut rng = SplitMix64::new(seed);
        let data = words(&mut rng, segments * seg_len, 1 << 16, false);
        let mut b = builder("segment sums");
        let input = b.input("input", Elem::U32, &[segments * seg_len]);
        let sums = prim::segment_sums(&mut b, "sums", input, segments, seg_len);
        let out = b.output("out", Elem::U32, &[segments]);
        // The sums are scratch: an inclusive scan of one-element segments copies them out.
        prim::scan(&mut b, "copy", sums, out, segments, 1, true);
        let got = run_twice(&device, &b.finish(), &[("input", data.clone())]);
        let want: Vec<u32> = (0..segments)
            .map(|s| data[s * seg_len..(s + 1) * seg_len].iter().sum())
            .collect();
        prop_assert_eq!(&got["out"], &want);
    }

    /// The stable segmented grouping (the radix sort, its values, ranks and offsets) equals a
    /// host stable sort: few and many bins (one to five radix passes), dropped entries, all
    /// entries in one bin, many segments, segments with nothing kept.
    #[test]
    fn grouping_equals_a_stable_host_sort(
        segments in 1usize..40, seg_len in lengths(), bins_log in 1u32..18, drop_frac in 0.0f64..1.0,
        all_equal: bool, seed: u64,
    ) {
        let Some(device) = wgpu_or_skip("grouping") else { return Ok(()); };
        let n = segments * seg_len;
        // Keep the sizes lavapipe-friendly.
        prop_assume!(n <= 200_000);
        // At most 2^18 keys in all (the offsets are one binary search per key).
        let bins_log = bins_log.min(18 - (segments as u32).next_power_of_two().trailing_zeros());
        let bins = (1usize << bins_log) + 1;
        let mut rng = SplitMix64::new(seed);
        let fixed = (rng.next_u64() % (bins as u64 - 1)) as i32;
        let src: Vec<i32> = (0..n)
            .map(|_| {
                if (rng.next_u64() % 1000) as f64 / 1000.0 < drop_frac {
                    -1
                } else if all_equal {
                    fixed
                } else {
                    (rng.next_u64() % (bins as u64 - 1)) as i32
                }
            })
            .collect();
        let mut b = builder("grouping");
        let input = b.input("src", Elem::I32, &[n]);
        let values = b.output("values", Elem::U32, &[n]);
        let offsets = b.output("offsets", Elem::U32, &[segments, bins]);
        let rank_of = b.output("rank_of", Elem::U32, &[n]);
        prim::group(&mut b, "group", input, segments, seg_len, bins, Grouped {
            values, offsets, rank_of: Some(rank_of), modulus: seg_len.max(1), divisor: 1,
        });
        let words: Vec<u32> = src.iter().map(|&v| v as u32).collect();
        let got = run_twice(&device, &b.finish(), &[("src", words)]);
        let (v, o, r) = host_group(&src, seg_len, bins);
        if n > 0 {
            prop_assert_eq!(&got["values"], &v);
            prop_assert_eq!(&got["offsets"], &o);
            prop_assert_eq!(&got["rank_of"], &r);
        } else {
            // An empty grouping: every bin of every segment starts at 0.
            prop_assert_eq!(&got["offsets"], &vec![0u32; segments * bins]);
        }
    }

    /// The grouping of rows whose entries name distinct bins (SPT's key index, the routed FFN's
    /// pairs) equals a stable host sort on its kept entries: one to 300 slots a row (more than
    /// a cube's units), rows past one chunk, dropped entries, all rows naming the same bins.
    #[test]
    fn grouping_rows_of_distinct_bins_equals_a_stable_host_sort(
        segments in 1usize..6, seg_rows in prop_oneof![Just(1usize), 2usize..200],
        slots in prop_oneof![Just(1usize), 2usize..70, Just(300usize)], extra in 0usize..600,
        drop_frac in 0.0f64..0.5, same_rows: bool, seed: u64,
    ) {
        let Some(device) = wgpu_or_skip("grouping rows") else { return Ok(()); };
        let bins = slots + extra + 1;
        let mut rng = SplitMix64::new(seed);
        let pick = |rng: &mut SplitMix64| {
            // `slots` distinct bins of 0..bins − 1, in random order (a partial shuffle).
            let mut all: Vec<i32> = (0..(bins - 1) as i32).collect();
            for i in 0..slots {
                let j = i + rng.below(all.len() - i);
                all.swap(i, j);
            }
            all.truncate(slots);
            all
        };
        let shared_row = pick(&mut rng);
        let mut src = Vec::new();
        for _ in 0..segments * seg_rows {
            let row = if same_rows { shared_row.clone() } else { pick(&mut rng) };
            for v in row {
                src.push(if rng.uniform() < drop_frac { -1 } else { v });
            }
        }
        let n = src.len();
        let seg_len = seg_rows * slots;
        let mut b = builder("grouping rows");
        let input = b.input("src", Elem::I32, &[n]);
        let values = b.output("values", Elem::U32, &[n]);
        let offsets = b.output("offsets", Elem::U32, &[segments, bins]);
        let rank_of = b.output("rank_of", Elem::U32, &[n]);
        prim::group_rows(&mut b, "rows", input, segments, seg_rows, slots, bins, Grouped {
            values, offsets, rank_of: Some(rank_of), modulus: seg_len, divisor: 1,
        });
        let words: Vec<u32> = src.iter().map(|&v| v as u32).collect();
        let got = run_twice(&device, &b.finish(), &[("src", words)]);
        let (v, o, r) = host_group(&src, seg_len, bins);
        prop_assert_eq!(&got["offsets"], &o);
        for s in 0..segments {
            let kept = o[s * bins + bins - 1] as usize;
            let at = s * seg_len;
            prop_assert_eq!(&got["values"][at..at + kept], &v[at..at + kept]);
        }
        for g in 0..n {
            if src[g] >= 0 {
                prop_assert_eq!(got["rank_of"][g], r[g]);
            }
        }
    }

    /// Row sums of one or two [rows, cols] f32 buffers (a cube per row, a fixed tree) equal f64
    /// sums to f32 accuracy, bit-identical from run to run.
    #[test]
    fn row_sums_equal_the_host(
        rows in prop_oneof![Just(0usize), Just(1usize), 2usize..300],
        cols in prop_oneof![Just(0usize), Just(1usize), 2usize..300, Just(128usize), Just(4097usize)],
        two: bool, seed: u64,
    ) {
        let Some(device) = wgpu_or_skip("row sums") else { return Ok(()); };
        let mut rng = SplitMix64::new(seed);
        let a: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let c: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let mut b = builder("row sums");
        let ab = b.input("a", Elem::F32, &[rows, cols]);
        let cb = two.then(|| b.input("c", Elem::F32, &[rows, cols]));
        let out = b.output("out", Elem::F32, &[rows]);
        prim::row_sums(&mut b, "rows", ab, cb, rows, cols, out);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let mut inputs = vec![("a", bits(&a))];
        if two {
            inputs.push(("c", bits(&c)));
        }
        let got = run_twice(&device, &b.finish(), &inputs);
        for r in 0..rows {
            let terms = (0..cols).flat_map(|j| {
                let x = a[r * cols + j] as f64;
                let y = if two { c[r * cols + j] as f64 } else { 0.0 };
                [x, y]
            });
            let (want, scale) = terms.fold((0.0f64, 0.0f64), |(s, m), x| (s + x, m + x.abs()));
            let v = f32::from_bits(got["out"][r]) as f64;
            prop_assert!((v - want).abs() <= 1e-5 * scale.max(1.0), "row {r}: {v} vs {want}");
        }
    }

    /// Column sums, plain and weighted with a bias column, equal f64 sums to f32 accuracy.
    #[test]
    fn column_sums_equal_the_host(
        rows in prop_oneof![Just(0usize), Just(1usize), 2usize..300, Just(65_537usize)],
        cols in prop_oneof![Just(1usize), 2usize..300, Just(257usize), Just(3000usize)],
        groups in 1usize..5, weighted: bool, seed: u64,
    ) {
        let Some(device) = wgpu_or_skip("column sums") else { return Ok(()); };
        prop_assume!(rows * cols <= 2_000_000);
        let mut rng = SplitMix64::new(seed);
        let a: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let w: Vec<f32> = (0..rows * groups).map(|_| rng.normal() as f32).collect();
        let groups = if weighted { groups } else { 1 };
        let mut b = builder("column sums");
        let ab = b.input("a", Elem::Storage, &[rows, cols]);
        let wb = weighted.then(|| b.input("w", Elem::F32, &[rows, groups]));
        let out = b.output("out", Elem::Storage, &[groups, cols]);
        let bias = weighted.then(|| b.output("bias", Elem::Storage, &[groups]));
        prim::column_sums(&mut b, "cols", ab, wb.map(|w| (w, groups)), rows, cols, out, bias);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let mut inputs = vec![("a", bits(&a))];
        if weighted {
            inputs.push(("w", bits(&w)));
        }
        let got = run_twice(&device, &b.finish(), &inputs);
        let weight = |t: usize, e: usize| if weighted { w[t * groups + e] as f64 } else { 1.0 };
        for e in 0..groups {
            for i in 0..=cols {
                if i == cols && !weighted {
                    continue;
                }
                let (want, scale): (f64, f64) = (0..rows).fold((0.0, 0.0), |(s, m), t| {
                    let x = if i < cols { a[t * cols + i] as f64 } else { 1.0 } * weight(t, e);
                    (s + x, m + x.abs())
                });
                let word = if i < cols { got["out"][e * cols + i] } else { got["bias"][e] };
                let v = f32::from_bits(word) as f64;
                prop_assert!((v - want).abs() <= 1e-5 * scale.max(1.0), "({e}, {i}): {v} vs {want}");
            }
        }
    }

    /// The selection of the k smallest magnitudes (ties to the lower flat index) equals the
    /// host's, with many ties.
    #[test]
    fn selection_of_the_smallest_equals_the_host(
        len in prop_oneof![Just(1usize), 2usize..5000, Just(70_000usize)], frac in 0.0f64..1.0,
        distinct in 1u64..50, seed: u64,
    ) {
        let Some(device) = wgpu_or_skip("selection") else { return Ok(()); };
        let k = ((frac * len as f64) as usize).clamp(1, len);
        let mut rng = SplitMix64::new(seed);
        // Few distinct magnitudes, both signs: many ties at the k-th value.
        let w: Vec<f32> = (0..len)
            .map(|_| {
                let m = (rng.next_u64() % distinct) as f32 * 0.25;
                if rng.next_u64().is_multiple_of(2) { m } else { -m }
            })
            .collect();
        let mut b = builder("selection");
        let wb = b.input("w", Elem::Storage, &[len]);
        let (state, prefix) = select::pivot(&mut b, wb, Float::Storage, len, Keep::Smallest(k), false, Role::Output);
        let index = b.output("index", Elem::U32, &[k]);
        select::fill(&mut b, wb, len, state, prefix, index);
        let got = run_twice(&device, &b.finish(), &[("w", w.iter().map(|x| x.to_bits()).collect())]);
        let mut order: Vec<usize> = (0..len).collect();
        order.sort_by(|&i, &j| w[i].abs().total_cmp(&w[j].abs()).then(i.cmp(&j)));
        let mut want: Vec<u32> = order[..k].iter().map(|&i| i as u32).collect();
        want.sort_unstable();
        prop_assert_eq!(&got["index"], &want);
        // The state: the k-th magnitude's key, the total and the last tie taken.
        prop_assume!(k < len);
        let kth = order[k - 1];
        prop_assert_eq!(got["select_state"][0], w[kth].abs().to_bits());
        prop_assert_eq!(got["select_state"][2], k as u32);
        prop_assert_eq!(got["select_state"][3], want.iter().copied().filter(|&i| w[i as usize].abs() == w[kth].abs()).max().unwrap());
    }
}

proptest! {
    // Each row length compiles its own kernel: fewer cases than the shape-independent ones.
    #![proptest_config(proptest_config(10))]

    /// The per-row top-k (highest score first, ties to the lower column, kept columns written
    /// ascending) equals the host's: short rows (a unit each), long rows (a cube each, from two
    /// to 512 entries per unit, past the 2^16 entries of the packed counts), few distinct
    /// values (many ties at the k-th), ±0 (equal), and all-equal rows.
    #[test]
    fn row_topk_equals_the_host(
        rows in 1usize..4,
        c in prop_oneof![1usize..40, 33usize..3000, Just(1024usize), Just(5000usize), Just(70_000usize)],
        frac in 0.0f64..1.0, distinct in 1u64..50, flat: bool, seed: u64,
    ) {
        let Some(device) = wgpu_or_skip("row top-k") else { return Ok(()); };
        let topk = ((frac * c as f64) as usize).clamp(1, c);
        let mut rng = SplitMix64::new(seed);
        let scores: Vec<f32> = (0..rows * c)
            .map(|_| {
                let m = (rng.next_u64() % distinct) as f32 * 0.5;
                if rng.next_u64().is_multiple_of(2) { m } else { -m }
            })
            .collect();
        let cfg = TopkConfig { c: c as u32, topk: topk as u32, base: true, term: false, abs: false, flat };
        let mut b = builder("row top-k");
        let base = b.input("base", Elem::F32, &[rows, c]);
        let term = b.zeros("term", Elem::Storage, &[1]);
        let kept = b.output("kept", Elem::U32, &[rows, topk]);
        select::row_topk(&mut b, "topk", cfg, rows, vec![Arg::Buf(base), Arg::Buf(term), Arg::Buf(kept)]);
        let got = run_twice(&device, &b.finish(), &[("base", scores.iter().map(|x| x.to_bits()).collect())]);
        for r in 0..rows {
            let s = &scores[r * c..(r + 1) * c];
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&i, &j| s[j].partial_cmp(&s[i]).unwrap().then(i.cmp(&j)));
            let mut want: Vec<u32> = order[..topk].iter().map(|&i| (i + if flat { r * c } else { 0 }) as u32).collect();
            want.sort_unstable();
            prop_assert_eq!(&got["kept"][r * topk..(r + 1) * topk], &want[..], "row {}", r);
        }
    }
}

/// More cubes than one grid axis holds (65 535 on lavapipe): 70 000 one-element segments
/// scanned, and a scan whose tile totals need three levels.
#[test]
fn scans_beyond_one_grid_axis_and_three_levels() {
    let Some(device) = wgpu_or_skip("scan beyond one grid axis") else {
        return;
    };
    let mut rng = SplitMix64::new(7);
    let data = words(&mut rng, 70_000, 100, false);
    assert_eq!(
        scan_on(&device, &data, 70_000, 1, false),
        host_scan(&data, 1, false)
    );
    let n = 1024 * 1024 + 3;
    let data = words(&mut rng, n, 3, false);
    assert_eq!(
        scan_on(&device, &data, 1, n, true),
        host_scan(&data, n, true)
    );
}

/// The per-row top-k over more rows than one grid axis holds (a cube per row, 70 000 rows
/// spread over two axes; the cubes past the last row keep nothing and write nothing).
#[test]
fn row_topk_beyond_one_grid_axis() {
    let Some(device) = wgpu_or_skip("row top-k beyond one grid axis") else {
        return;
    };
    let (rows, c, topk) = (70_000usize, 40usize, 3usize);
    let mut rng = SplitMix64::new(11);
    let scores: Vec<f32> = (0..rows * c).map(|_| (rng.next_u64() % 7) as f32).collect();
    let cfg = TopkConfig {
        c: c as u32,
        topk: topk as u32,
        base: true,
        term: false,
        abs: false,
        flat: false,
    };
    let mut b = builder("row top-k, many rows");
    let base = b.input("base", Elem::F32, &[rows, c]);
    let term = b.zeros("term", Elem::Storage, &[1]);
    let kept = b.output("kept", Elem::U32, &[rows, topk]);
    select::row_topk(
        &mut b,
        "topk",
        cfg,
        rows,
        vec![Arg::Buf(base), Arg::Buf(term), Arg::Buf(kept)],
    );
    let got = run_twice(
        &device,
        &b.finish(),
        &[("base", scores.iter().map(|x| x.to_bits()).collect())],
    );
    for r in 0..rows {
        let s = &scores[r * c..(r + 1) * c];
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&i, &j| s[j].total_cmp(&s[i]).then(i.cmp(&j)));
        let mut want: Vec<u32> = order[..topk].iter().map(|&i| i as u32).collect();
        want.sort_unstable();
        assert_eq!(&got["kept"][r * topk..(r + 1) * topk], &want[..], "row {r}");
    }
}
