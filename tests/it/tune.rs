//! The autotuner: the IR's schedule spaces, the sweep's choice, the persisted cache (a hit in a
//! second process, invalidation when the candidate set changes, recovery from corrupt or foreign
//! files) on fake candidate sets without a device; and every knob value of every space against
//! the reference executor on wgpu (any candidate may be chosen, so each must be correct; see
//! `points` for which points run).

use kernels_ir::pattern::{BlockDiagonal, Pattern, Routed};
use kernels_ir::reference::{self, TensorMap, Value};
use kernels_ir::{DType, Direction, KernelSpec, Knob, OpKind, Schedule};
use sparsecube_runtime::selftest::{
    LinearCase, MonarchCase, PstCase, RoutedCase, SaraCase, SptCase, tolerance,
};
use sparsecube_runtime::tune::{
    Candidate, DeviceIdentity, Entry, Lookup, TuneCache, TuneError, TuneKey, settle, sweep,
};
use sparsecube_tests::{rel_err, wgpu_or_skip};
use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

fn identity(device: &str) -> DeviceIdentity {
    DeviceIdentity {
        device: device.into(),
        driver: "fake driver 1.0".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Candidates that report the given times (`None`: fails) and count their runs.
fn fake<'a>(times: &[Option<f64>], runs: &'a [Cell<usize>]) -> Vec<Candidate<'a>> {
    times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = *t;
            let runs = &runs[i];
            Candidate {
                label: format!("c{i}"),
                time: Box::new(move || {
                    runs.set(runs.get() + 1);
                    t.ok_or_else(|| format!("c{i} cannot launch"))
                }),
            }
        })
        .collect()
}

fn counters(n: usize) -> Vec<Cell<usize>> {
    (0..n).map(|_| Cell::new(0)).collect()
}

#[test]
fn schedule_space_starts_with_the_spec_and_covers_every_knob() {
    for &op in OpKind::ALL {
        let spec = KernelSpec::example(op);
        spec.verify()
            .unwrap_or_else(|e| panic!("example {op} does not verify: {e}"));
        let space = spec.schedule.space(op);
        assert_eq!(
            space[0], spec.schedule,
            "{op}: the spec's own schedule first"
        );
        let mut labels: Vec<String> = space.iter().map(|s| s.label(op)).collect();
        let n = labels.len();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), n, "{op}: each point once: {labels:?}");
        // Every value of every knob the op reads appears, and the single-knob changes come
        // first (the tuner's budget reaches them before the rest of the product).
        let axes = spec.schedule.axes(op);
        assert_eq!(
            &space[..axes.len()],
            &axes[..],
            "{op}: the axes lead the space"
        );
        for knob in Knob::of(op) {
            for value in knob.values() {
                let valid = KernelSpec {
                    schedule: spec.schedule.with(*knob, &value),
                    ..spec.clone()
                }
                .verify()
                .is_ok();
                let present = space.iter().any(|s| s.knob(*knob) == value);
                assert!(present || !valid, "{op}: {}={value} missing", knob.field());
            }
        }
        match Knob::of(op) {
            [] => assert_eq!(n, 1, "{op}"),
            [Knob::Fused, Knob::Lanes] => assert_eq!(n, 2 * Knob::LANES.len(), "{op}"),
            knobs => {
                assert_eq!(knobs, &Knob::TILE[..], "{op}");
                assert!(n > 20, "{op}: the tile program's space has {n} points");
            }
        }
        for s in &space {
            let point = KernelSpec {
                schedule: *s,
                ..spec.clone()
            };
            point
                .verify()
                .unwrap_or_else(|e| panic!("{op} {}: {e}", s.label(op)));
        }
    }
    // A spec written with tile_k = 32 keeps it first; the other depths follow on its axis.
    let s = Schedule {
        tile_k: 32,
        ..Schedule::default()
    };
    let labels: Vec<String> = s
        .axes(OpKind::RoutedFfn)
        .iter()
        .map(|p| p.label(OpKind::RoutedFfn))
        .collect();
    assert_eq!(
        labels[0], "tile_m=64,tile_n=64,tile_k=32,vector=4,stages=2,mma=auto",
        "{labels:?}"
    );
    assert!(
        labels.contains(&"tile_m=64,tile_n=64,tile_k=16,vector=4,stages=2,mma=auto".to_string())
    );
    // 128×128 tiles with 32-deep double-buffered slices stage 66 KiB of f32: in the IR's space
    // (an sm_90 cube has 227 KiB), dropped by devices with less (`Device::schedule_space`;
    // see tensor_cores.rs for lavapipe's 32 KiB).
    let big = Schedule {
        tile_m: 128,
        tile_n: 128,
        tile_k: 32,
        stages: 2,
        ..Schedule::default()
    };
    assert!(
        Schedule::default()
            .space(OpKind::DenseLinear)
            .iter()
            .any(|p| p.label(OpKind::DenseLinear) == big.label(OpKind::DenseLinear))
    );
}

#[test]
fn verifier_rejects_a_slice_depth_the_mainloop_does_not_have() {
    let err = KernelSpec::builder("ffn", OpKind::RoutedFfn)
        .dims([("T", 64), ("d_model", 64), ("d_ff", 256)])
        .pattern(Pattern::Routed(Routed::default()))
        .schedule(Schedule {
            tile_k: 64,
            ..Schedule::default()
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "tile_k = 64 is not a slice depth of routed-ffn's tile program; use one of [16, 32, 8]"
        ),
        "{err}"
    );
    // Ops that do not read tile_k accept any power of two.
    let mut spec = KernelSpec::example(OpKind::SptAttention);
    spec.schedule.tile_k = 64;
    spec.verify().unwrap();
}

#[test]
fn keys_bucket_sizes_to_powers_of_two_and_keep_what_changes_the_kernel() {
    let mut a = KernelSpec::example(OpKind::DenseLinear);
    let mut b = a.clone();
    a.dims.insert("T".into(), 300);
    b.dims.insert("T".into(), 511);
    assert_eq!(TuneKey::of(&a), TuneKey::of(&b));
    b.dims.insert("T".into(), 513);
    assert_ne!(TuneKey::of(&a), TuneKey::of(&b));
    let mut c = a.clone();
    c.dtype = DType::F16;
    assert_ne!(TuneKey::of(&a), TuneKey::of(&c));
    let mut d = a.clone();
    d.direction = Direction::Backward;
    assert_ne!(TuneKey::of(&a), TuneKey::of(&d));
}

#[test]
fn sweep_picks_the_fastest_candidate_that_ran() {
    let runs = counters(4);
    let entry = sweep(
        fake(&[Some(3.0), Some(1.0), None, Some(2.0)], &runs),
        None,
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(entry.winner, 1);
    assert_eq!(entry.winner_label(), "c1");
    assert_eq!(entry.times_ms, [Some(3.0), Some(1.0), None, Some(2.0)]);
    assert!(runs.iter().all(|r| r.get() == 1));
    // A tie keeps the earlier candidate (the fallback first).
    let runs = counters(2);
    let entry = sweep(fake(&[Some(2.0), Some(2.0)], &runs), None, |_, _, _| {}).unwrap();
    assert_eq!(entry.winner, 0);
}

#[test]
fn sweep_over_budget_times_only_the_fallback() {
    let runs = counters(3);
    let mut reported = Vec::new();
    let entry = sweep(
        fake(&[Some(5.0), Some(1.0), Some(0.5)], &runs),
        Some(Duration::ZERO),
        |i, label, r| reported.push((i, label.to_string(), r.clone())),
    )
    .unwrap();
    assert_eq!(entry.winner, 0);
    assert_eq!(entry.times_ms, [Some(5.0), None, None]);
    assert_eq!(runs.iter().map(Cell::get).collect::<Vec<_>>(), [1, 0, 0]);
    assert_eq!(reported.len(), 3);
    assert_eq!(reported[1], (1, "c1".to_string(), Ok(None)));
    // A failing fallback is an error: nothing correct is known to run.
    let runs = counters(2);
    let err = sweep(fake(&[None, Some(1.0)], &runs), None, |_, _, _| {}).unwrap_err();
    assert!(
        matches!(&err, TuneError::FallbackFailed { label, .. } if label == "c0"),
        "{err}"
    );
    // One candidate: nothing to time.
    let runs = counters(1);
    let entry = sweep(fake(&[Some(1.0)], &runs), None, |_, _, _| {}).unwrap();
    assert_eq!((entry.winner, runs[0].get()), (0, 0));
}

fn key() -> TuneKey {
    TuneKey::of(&KernelSpec::example(OpKind::DenseLinear))
}

/// Child half of `cache_hit_in_a_second_process`, which runs it in a second process with the
/// cache directory set: settles the key with candidates that must not run and prints the winner.
#[test]
#[ignore = "the second process of cache_hit_in_a_second_process (which runs it)"]
fn second_process_child() {
    let dir = std::env::var_os("SPARSECUBE_TUNE_CHILD_DIR")
        .expect("run by cache_hit_in_a_second_process, which sets SPARSECUBE_TUNE_CHILD_DIR");
    let mut cache = TuneCache::open(Path::new(&dir), identity("fake gpu"));
    assert!(cache.discarded.is_none(), "{:?}", cache.discarded);
    let runs = counters(3);
    let settled = settle(
        &mut cache,
        &key(),
        fake(&[Some(9.0), Some(9.0), Some(9.0)], &runs),
        None,
        false,
        |_, _, _| {},
    )
    .unwrap();
    assert!(runs.iter().all(|r| r.get() == 0), "a hit runs no candidate");
    println!(
        "CHILD cached={} winner={}",
        settled.cached,
        settled.entry.winner_label()
    );
}

#[test]
fn cache_hit_in_a_second_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = TuneCache::open(dir.path(), identity("fake gpu"));
    assert!(cache.is_empty() && cache.discarded.is_none());
    let runs = counters(3);
    let settled = settle(
        &mut cache,
        &key(),
        fake(&[Some(4.0), Some(3.0), Some(1.5)], &runs),
        None,
        false,
        |_, _, _| {},
    )
    .unwrap();
    assert!(!settled.cached);
    assert_eq!(settled.entry.winner_label(), "c2");
    cache.save().unwrap();
    // Only the cache file is left in the directory (the temporary was renamed).
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files,
        [std::ffi::OsString::from(identity("fake gpu").file_name())]
    );

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "tune::second_process_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("SPARSECUBE_TUNE_CHILD_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHILD cached=true winner=c2"), "{stdout}");
}

#[test]
fn a_changed_candidate_set_is_tuned_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = TuneCache::open(dir.path(), identity("fake gpu"));
    let runs = counters(2);
    settle(
        &mut cache,
        &key(),
        fake(&[Some(2.0), Some(1.0)], &runs),
        None,
        false,
        |_, _, _| {},
    )
    .unwrap();
    cache.save().unwrap();
    let mut cache = TuneCache::open(dir.path(), identity("fake gpu"));
    let labels = ["c0".to_string(), "c1".to_string(), "c2".to_string()];
    assert!(matches!(cache.lookup(&key(), &labels), Lookup::Stale(_)));
    let runs = counters(3);
    let settled = settle(
        &mut cache,
        &key(),
        fake(&[Some(2.0), Some(1.0), Some(0.25)], &runs),
        None,
        false,
        |_, _, _| {},
    )
    .unwrap();
    assert!(!settled.cached);
    assert!(
        settled
            .replaced
            .as_deref()
            .unwrap()
            .contains("the candidate set changed"),
        "{settled:?}"
    );
    assert_eq!(settled.entry.winner_label(), "c2");
    assert!(runs.iter().all(|r| r.get() == 1));
    // `force` times a key the cache already holds.
    let runs = counters(3);
    let settled = settle(
        &mut cache,
        &key(),
        fake(&[Some(1.0), Some(2.0), Some(3.0)], &runs),
        None,
        true,
        |_, _, _| {},
    )
    .unwrap();
    assert!(!settled.cached && settled.replaced.is_none());
    assert_eq!(settled.entry.winner, 0);
}

#[test]
fn corrupt_or_foreign_cache_files_are_ignored_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let me = identity("fake gpu");
    let path = dir.path().join(me.file_name());
    let entry = Entry {
        candidates: vec!["c0".into(), "c1".into()],
        times_ms: vec![Some(2.0), Some(1.0)],
        winner: 1,
    };
    let good = {
        let mut c = TuneCache::open(dir.path(), me.clone());
        c.insert(&key(), entry.clone());
        c.save().unwrap();
        std::fs::read_to_string(&path).unwrap()
    };
    let labels = entry.candidates.clone();
    let cases: [(&str, String, &str); 5] = [
        (
            "garbage",
            "\u{0}\u{1}not json".into(),
            "is not a sparsecube tuning cache",
        ),
        (
            "truncated",
            good[..good.len() / 2].to_string(),
            "is not a sparsecube tuning cache",
        ),
        (
            "another device",
            good.replace("fake gpu", "other gpu"),
            "belongs to another device or version",
        ),
        (
            "another layout",
            good.replace("\"format\": 1", "\"format\": 99"),
            "has layout 99",
        ),
        (
            "winner out of range",
            good.replace("\"winner\": 1", "\"winner\": 7"),
            "has an inconsistent entry",
        ),
    ];
    for (what, text, why) in cases {
        std::fs::write(&path, &text).unwrap();
        let mut cache = TuneCache::open(dir.path(), me.clone());
        let discarded = cache.discarded.clone().unwrap_or_default();
        assert!(discarded.contains(why), "{what}: {discarded}");
        assert!(cache.is_empty(), "{what}");
        assert_eq!(cache.lookup(&key(), &labels), Lookup::Miss, "{what}");
        // Rebuilt: the next save writes a good file.
        cache.insert(&key(), entry.clone());
        cache.save().unwrap();
        let reopened = TuneCache::open(dir.path(), me.clone());
        assert!(reopened.discarded.is_none(), "{what}");
        assert_eq!(
            reopened.lookup(&key(), &labels),
            Lookup::Hit(entry.clone()),
            "{what}"
        );
    }
    // A newer crate version is a different file: the old one is left alone.
    let newer = DeviceIdentity {
        version: "99.0.0".into(),
        ..me.clone()
    };
    assert_ne!(newer.file_name(), me.file_name());
}

/// Every output of `got` against `want`: float outputs within `tol`, index outputs exactly.
fn agree(got: &TensorMap, want: &TensorMap, tol: f64, what: &str) {
    for (name, w) in want {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no `{name}`"));
        match (g, w) {
            (Value::F(g), Value::F(w)) => {
                let err = rel_err(&g.data, &w.data, 1e-12);
                assert!(err <= tol, "{what}: {name} error {err:.2e} > {tol:.0e}");
            }
            (Value::I(g), Value::I(w)) => assert_eq!(g.data, w.data, "{what}: {name}"),
            _ => panic!("{what}: `{name}` differs in kind"),
        }
    }
}

/// The points a kernel test runs `spec` at. The tile program's mainloop is one code path for
/// every op, so its every knob value (each single-knob change of the default) is run on the
/// products that are nothing but the mainloop — the dense linear and the block-diagonal map —
/// and every other op on the tile program runs at the default and at two corners that change
/// every knob at once (each tile size and depth, scalar and 2-wide loads, one stage), which
/// exercise its prologue and epilogue against other tile shapes without a compile per knob
/// value (compiles dominate this test on lavapipe). Ops off the tile program (SPT's fused and
/// lanes knobs) run at every single-knob change.
fn points(device: &sparsecube_runtime::Device, spec: &KernelSpec) -> Vec<Schedule> {
    if !spec.op.tiled() || matches!(spec.op, OpKind::DenseLinear | OpKind::BlockDiagLinear) {
        return device.schedule_axes(spec);
    }
    let corner = |tile_m, tile_n, tile_k, vector| Schedule {
        tile_m,
        tile_n,
        tile_k,
        vector,
        stages: 1,
        ..spec.schedule
    };
    let space = device.schedule_space(spec);
    let wanted = [spec.schedule, corner(32, 128, 8, 1), corner(128, 32, 32, 2)];
    for w in &wanted {
        assert!(space.contains(w), "{w:?} left {}'s schedule space", spec.op);
    }
    wanted.to_vec()
}

/// Forward and backward of `spec_of` at the [`points`] of its op's schedule space.
fn every_point(
    device: &sparsecube_runtime::Device,
    what: &str,
    dtype: DType,
    spec_of: impl Fn(Direction) -> KernelSpec,
    inputs: TensorMap,
) {
    let tol = tolerance(dtype);
    for direction in [Direction::Forward, Direction::Backward] {
        let spec = spec_of(direction);
        let mut ins = inputs.clone();
        if let (Direction::Forward, Some(g)) = (direction, spec.op.upstream_grad()) {
            ins.remove(g);
        }
        let want = reference::run(&spec, &ins).unwrap();
        for schedule in points(device, &spec) {
            let point = KernelSpec {
                schedule,
                ..spec.clone()
            };
            let label = format!("{what} {direction} {}", schedule.label(spec.op));
            let got = sparsecube_runtime::run(device, &point, &ins)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            agree(&got, &want, tol, &label);
        }
    }
}

#[test]
fn every_knob_value_matches_the_reference() {
    let Some(device) = wgpu_or_skip("every_knob_value_matches_the_reference") else {
        return;
    };
    let mut rng = kernels_ir::reference::rng::SplitMix64::new(0x7E57);
    let f32s = [DType::F32];
    // Every selftest case family, each drawn once: the same random shapes `selftest` uses (each
    // draw compiles every knob value's kernels afresh on lavapipe: the CI's long pole).
    macro_rules! each_point {
        ($case:expr) => {{
            let c = $case;
            every_point(
                &device,
                &c.to_string(),
                c.dtype,
                |d| c.spec(d).unwrap(),
                c.inputs(),
            );
        }};
    }
    each_point!(SptCase::draw(&mut rng, 80, &f32s));
    each_point!(RoutedCase::draw(&mut rng, 150, &f32s));
    each_point!(MonarchCase::draw(&mut rng, &f32s));
    each_point!(LinearCase::draw(&mut rng, &f32s));
    each_point!(SaraCase::draw(&mut rng, &f32s));
    each_point!(PstCase::draw(&mut rng, &f32s));
    // The block-diagonal map past one tile in its reduction (70 inputs per block).
    let (n, blocks, pi, qo) = (70, 3, 70, 20);
    let mut ins = TensorMap::new();
    for (name, shape) in [
        ("x", vec![n, blocks * pi]),
        ("w", vec![blocks, qo, pi]),
        ("dy", vec![n, blocks * qo]),
    ] {
        ins.insert(
            name.into(),
            Value::F(sparsecube_tests::randn(&mut rng, &shape, 1.0)),
        );
    }
    let spec_of = |direction| {
        KernelSpec::builder("bd", OpKind::BlockDiagLinear)
            .dims([("N", n), ("in", blocks * pi), ("out", blocks * qo)])
            .pattern(Pattern::BlockDiagonal(BlockDiagonal { blocks }))
            .direction(direction)
            .build()
            .unwrap()
    };
    every_point(&device, "block-diag", DType::F32, spec_of, ins);
}

#[test]
fn concurrent_saves_merge_and_leave_a_valid_cache() {
    // Eight writers (each its own open, as separate processes would be), each tuning its own
    // keys and saving after every one: the file always parses, and ends with every key.
    let dir = tempfile::tempdir().unwrap();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let mut cache = TuneCache::open(&dir, identity("concurrent"));
                for i in 0..5 {
                    cache.insert(
                        &TuneKey(format!("writer{w}-key{i}")),
                        Entry {
                            candidates: vec!["a".into(), "b".into()],
                            times_ms: vec![Some(2.0), Some(1.0 + w as f64)],
                            winner: 1,
                        },
                    );
                    cache.save().unwrap();
                    let reread = TuneCache::open(&dir, identity("concurrent"));
                    assert!(reread.discarded.is_none(), "{:?}", reread.discarded);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let cache = TuneCache::open(dir.path(), identity("concurrent"));
    assert!(cache.discarded.is_none(), "{:?}", cache.discarded);
    assert_eq!(cache.len(), 40);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "no temporary left");
    // A key tuned again by a later writer replaces the file's; others' keys stay.
    let mut again = TuneCache::open(dir.path(), identity("concurrent"));
    let stale = TuneCache::open(dir.path(), identity("concurrent"));
    again.insert(
        &TuneKey("writer0-key0".into()),
        Entry {
            candidates: vec!["a".into()],
            times_ms: vec![None],
            winner: 0,
        },
    );
    again.save().unwrap();
    stale.save().unwrap();
    let last = TuneCache::open(dir.path(), identity("concurrent"));
    assert_eq!(last.len(), 40);
    assert_eq!(
        last.lookup(&TuneKey("writer0-key0".into()), &["a".into()]),
        Lookup::Hit(Entry {
            candidates: vec!["a".into()],
            times_ms: vec![None],
            winner: 0,
        }),
        "a save that tuned nothing must not undo another process's new result"
    );
}
