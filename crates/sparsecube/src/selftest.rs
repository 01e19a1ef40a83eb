//! `sparsecube selftest`: every generated kernel, forward and backward, against the reference
//! executor on random shapes, on one device. The check a lent GPU runs (scripts/device-check.sh);
//! the same comparison as the wgpu proptests in CI (`sparsecube_runtime::selftest`).

use anyhow::{Result, bail};
use kernels_ir::DType;
use kernels_ir::reference::rng::SplitMix64;
use sparsecube_runtime::selftest::{
    BlockDiagCase, CaseReport, CbmCase, EncodeCase, LinearCase, MonarchCase, NmCase, PstCase,
    RoutedCase, SaraCase, SptCase, check_block_diag, check_cbm, check_dense, check_encode,
    check_linear, check_monarch, check_nm, check_pst, check_routed, check_sara, check_spt,
    quick_cases,
};
use sparsecube_runtime::{Device, DeviceKind};

/// What to run.
pub struct Options {
    /// Random cases per run.
    pub cases: usize,
    /// Longest sequence drawn.
    pub max_len: usize,
    /// Seed of the case draw.
    pub seed: u64,
    /// Only the two fixed cases that launch every kernel once (for compute-sanitizer).
    pub quick: bool,
}

/// Every storage dtype (on adapters without bf16 storage the runtime holds bf16 as f32).
fn dtypes(_device: &Device) -> Vec<DType> {
    vec![DType::F32, DType::F16, DType::BF16]
}

pub fn run(device: &Device, opts: &Options) -> Result<()> {
    if device.kind() == DeviceKind::Reference {
        bail!(
            "selftest compares generated kernels with the reference executor: give --device cuda or wgpu"
        );
    }
    let dtypes = dtypes(device);
    let mut cases: Vec<(bool, SptCase)> = Vec::new();
    let mut routed: Vec<RoutedCase> = Vec::new();
    let mut cbm: Vec<CbmCase> = Vec::new();
    let mut monarch: Vec<MonarchCase> = Vec::new();
    let mut linear: Vec<LinearCase> = Vec::new();
    let mut sara: Vec<SaraCase> = Vec::new();
    let mut pst: Vec<PstCase> = Vec::new();
    let mut nm: Vec<NmCase> = Vec::new();
    let mut block_diag: Vec<BlockDiagCase> = Vec::new();
    let mut encode: Vec<EncodeCase> = Vec::new();
    if opts.quick {
        for &dt in &dtypes {
            cases.extend(quick_cases(dt).into_iter().map(|c| (false, c)));
        }
        cases.push((true, quick_cases(DType::F32)[0].clone()));
        // One routed case per dtype: every routed kernel, forward and backward.
        let mut rng = SplitMix64::new(opts.seed);
        for &dt in &dtypes {
            routed.push(RoutedCase::draw(&mut rng, 70, &[dt]));
            cbm.push(CbmCase::draw(&mut rng, &[dt]));
            monarch.push(MonarchCase::draw(&mut rng, &[dt]));
            linear.push(LinearCase::draw(&mut rng, &[dt]));
            sara.push(SaraCase::draw(&mut rng, &[dt]));
            pst.push(PstCase::draw(&mut rng, &[dt]));
            nm.push(NmCase::draw(&mut rng, &[dt]));
            block_diag.push(BlockDiagCase::draw(&mut rng, &[dt]));
            encode.push(EncodeCase::draw(&mut rng, &[dt]));
        }
    } else {
        let mut rng = SplitMix64::new(opts.seed);
        for _ in 0..opts.cases {
            cases.push((false, SptCase::draw(&mut rng, opts.max_len, &dtypes)));
        }
        // Sizes of a real layer's head (and one that no tile divides), every dtype, when the
        // run reaches such lengths.
        let large: &[DType] = if opts.max_len >= 256 { &dtypes } else { &[] };
        for &dt in large {
            for (l, topk, causal, fused) in [(512, 64, false, true), (389, 48, true, false)] {
                cases.push((
                    false,
                    SptCase {
                        b: 1,
                        h: 2,
                        l,
                        d: 64,
                        topk,
                        causal,
                        clamp: false,
                        adc: fused,
                        fused,
                        block: 1,
                        dtype: dt,
                        seed: rng.next_u64(),
                    },
                ));
            }
        }
        // Block-granular selection (METHODS.md §7): random cases, and a layer's head with G 64.
        for _ in 0..opts.cases.div_ceil(2) {
            cases.push((false, SptCase::draw_blocks(&mut rng, opts.max_len, &dtypes)));
        }
        for &dt in large {
            cases.push((
                false,
                SptCase {
                    b: 1,
                    h: 2,
                    l: 512,
                    d: 64,
                    topk: 64,
                    causal: true,
                    clamp: false,
                    adc: true,
                    fused: true,
                    block: 64,
                    dtype: dt,
                    seed: rng.next_u64(),
                },
            ));
        }
        for _ in 0..4 {
            cases.push((true, SptCase::draw(&mut rng, opts.max_len, &[DType::F32])));
        }
        for _ in 0..opts.cases / 2 {
            routed.push(RoutedCase::draw(&mut rng, opts.max_len, &dtypes));
            cbm.push(CbmCase::draw(&mut rng, &dtypes));
            monarch.push(MonarchCase::draw(&mut rng, &dtypes));
            linear.push(LinearCase::draw(&mut rng, &dtypes));
            sara.push(SaraCase::draw(&mut rng, &dtypes));
            pst.push(PstCase::draw(&mut rng, &dtypes));
            nm.push(NmCase::draw(&mut rng, &dtypes));
            block_diag.push(BlockDiagCase::draw(&mut rng, &dtypes));
            encode.push(EncodeCase::draw(&mut rng, &dtypes));
        }
    }
    let total = cases.len()
        + routed.len()
        + cbm.len()
        + monarch.len()
        + linear.len()
        + sara.len()
        + pst.len()
        + nm.len()
        + block_diag.len()
        + encode.len();
    println!(
        "selftest on {}: {total} case(s), SPT attention (and the dense baseline), the routed FFN, the Sparse-CBM head, Monarch, the block-diagonal map, the dense linear, SaRA, PST, N:M and PQ encoding, forward + backward, vs the reference executor",
        sparsecube_runtime::describe(device.kind())?,
    );
    let mut failed = 0;
    // A device error fails its case; the others still run.
    let mut record = |case: &dyn std::fmt::Display, report: Result<CaseReport, _>| match report {
        Ok(r) => {
            println!("{r}");
            failed += usize::from(!r.passed());
        }
        Err(e) => {
            println!("FAIL [{case}]: {e}");
            failed += 1;
        }
    };
    for (dense, case) in &cases {
        let report = if *dense {
            check_dense(device, case)
        } else {
            check_spt(device, case)
        };
        record(case, report);
    }
    for case in &routed {
        record(case, check_routed(device, case));
    }
    for case in &cbm {
        record(case, check_cbm(device, case));
    }
    for case in &monarch {
        record(case, check_monarch(device, case));
    }
    for case in &linear {
        record(case, check_linear(device, case));
    }
    for case in &sara {
        record(case, check_sara(device, case));
    }
    for case in &pst {
        record(case, check_pst(device, case));
    }
    for case in &nm {
        record(case, check_nm(device, case));
    }
    for case in &block_diag {
        record(case, check_block_diag(device, case));
    }
    for case in &encode {
        record(case, check_encode(device, case));
    }
    if failed > 0 {
        bail!("{failed} of {total} case(s) failed");
    }
    println!("selftest passed: {total} case(s)");
    Ok(())
}
