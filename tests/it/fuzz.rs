//! Fuzzing on stable Rust: every parser a user's bytes reach, fed mutations of real inputs (the
//! IR snapshots and examples, the embedded config, checkpoints and safetensors inputs written by
//! the code itself, tuning caches, the DSL's examples). Each input must parse or give a typed
//! error: a panic, an input that runs past [`TIME_LIMIT`], or one allocation larger than
//! [`alloc_limit`] of its length fails the test, printing the input.
//!
//! The mutator is deterministic (a seed per target): bit flips, interesting bytes, deleted,
//! duplicated and inserted ranges, numbers replaced by boundary values (0, 2³², 2⁶⁴ − 1, 1e308,
//! nan, ...), safetensors header lengths replaced, splices of two seeds, truncation.
//!
//! CI runs [`CASES`] inputs per target; `fuzz_soak` (ignored) runs `SPARSECUBE_FUZZ_CASES`
//! (default 200 000) per target from seed `SPARSECUBE_FUZZ_SEED`: its last result is in
//! docs/reliability.md.

use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::{Direction, KernelSpec, Module, OpKind};
use sparsecube_codegen::plan::{DeviceLimits, LowerOptions, lower};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Inputs per target in the bounded (CI) run.
const CASES: usize = 4000;
/// The longest one input may take (debug build, a loaded 2-core machine).
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// The largest single allocation an input of `len` bytes may cause: a parser may copy and widen
/// what it was given, never allocate what a header merely claims.
fn alloc_limit(len: usize) -> usize {
    64 * len + (4 << 20)
}

// ---------------------------------------------------------------------------------------------
// The allocation watch: the largest single allocation of the fuzzing thread.

struct Watch;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = WATCHING.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// The test binary's allocator is the system's, with a note of each size. Only this
// integration-test binary has it; the product's allocator is untouched.
#[allow(unsafe_code)]
// SAFETY: every call is forwarded unchanged to `System`; `note` touches thread-locals with
// const initialisers (no allocation, no destructor).
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watch = Watch;

// ---------------------------------------------------------------------------------------------
// The mutator.

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "16",
    "255",
    "65536",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1e308",
    "1e400",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "-0",
    "0.5",
    "1e-320",
];

const BYTES: &[u8] = b"\0\xff(){}[]=,.:;\"'\n -_/#*9e+LTBHD";

struct Mutator {
    rng: SplitMix64,
    seeds: Vec<Vec<u8>>,
}

impl Mutator {
    fn new(seed: u64, seeds: Vec<Vec<u8>>) -> Self {
        assert!(!seeds.is_empty());
        Self {
            rng: SplitMix64::new(seed),
            seeds,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n.max(1))
    }

    fn next(&mut self) -> Vec<u8> {
        let pick = self.below(self.seeds.len());
        let mut input = self.seeds[pick].clone();
        let rounds = 1 + self.below(4);
        for _ in 0..rounds {
            self.mutate(&mut input);
        }
        input
    }

    fn mutate(&mut self, b: &mut Vec<u8>) {
        let len = b.len();
        match self.below(10) {
            0 if len > 0 => {
                let i = self.below(len);
                b[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let i = self.below(len);
                b[i] = BYTES[self.below(BYTES.len())];
            }
            2 if len > 0 => {
                let at = self.below(len);
                let n = 1 + self.below(16.min(len - at));
                b.drain(at..at + n);
            }
            3 if len > 0 => {
                let at = self.below(len);
                let n = 1 + self.below(32.min(len - at));
                let copy = b[at..at + n].to_vec();
                let to = self.below(len + 1);
                b.splice(to..to, copy);
            }
            4 => {
                let to = self.below(len + 1);
                let n = 1 + self.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next_u64() as u8).collect();
                b.splice(to..to, bytes);
            }
            5 | 6 => self.replace_number(b),
            7 if len >= 8 => {
                // A safetensors header length: random, just too long, or enormous.
                let claimed = match self.below(4) {
                    0 => self.rng.next_u64(),
                    1 => u64::MAX,
                    2 => len as u64,
                    _ => (len as u64).saturating_sub(8).saturating_add(1),
                };
                b[..8].copy_from_slice(&claimed.to_le_bytes());
            }
            8 => {
                let pick = self.below(self.seeds.len());
                let other = self.seeds[pick].clone();
                let cut = self.below(len + 1);
                let from = self.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            _ => {
                let keep = self.below(len + 1);
                b.truncate(keep);
            }
        }
    }

    /// Replaces a run of digits (with its sign, point and exponent) by a boundary value.
    fn replace_number(&mut self, b: &mut Vec<u8>) {
        let starts: Vec<usize> = (0..b.len())
            .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
            .collect();
        if starts.is_empty() {
            return;
        }
        let at = starts[self.below(starts.len())];
        let mut end = at;
        while end < b.len() && (b[end].is_ascii_digit() || b"._eE+-".contains(&b[end])) {
            end += 1;
        }
        let n = NUMBERS[self.below(NUMBERS.len())].as_bytes().to_vec();
        b.splice(at..end, n);
    }
}

// ---------------------------------------------------------------------------------------------
// The runner.

/// What failed, with the input that did it.
struct Failure {
    input: Vec<u8>,
    problem: String,
}

fn show(input: &[u8]) -> String {
    let text = String::from_utf8_lossy(&input[..input.len().min(2000)]);
    format!("{} bytes: {text:?}", input.len())
}

/// Runs `cases` mutations of `seeds` through the target `make()` builds (on the fuzzing thread,
/// so that it may hold non-`Send` state). Panics, naming the inputs, when any fails.
fn fuzz<F, T>(name: &str, seed: u64, cases: usize, seeds: Vec<Vec<u8>>, make: F)
where
    F: FnOnce() -> T + Send + 'static,
    T: FnMut(&[u8]),
{
    // The worker reports each input before running it, then the outcome.
    enum Msg {
        Start(Vec<u8>),
        Done(Option<Failure>),
    }
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .stack_size(64 << 20)
        .spawn(move || {
            let mut target = make();
            let mut mutator = Mutator::new(seed, seeds);
            for i in 0..cases {
                // Every seed as it is first, then mutations.
                let input = if i < mutator.seeds.len() {
                    mutator.seeds[i].clone()
                } else {
                    mutator.next()
                };
                if tx.send(Msg::Start(input.clone())).is_err() {
                    return;
                }
                LARGEST.with(|l| l.set(0));
                WATCHING.with(|w| w.set(true));
                let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
                WATCHING.with(|w| w.set(false));
                let largest = LARGEST.with(Cell::get);
                let failure = match outcome {
                    Err(p) => Some(Failure {
                        problem: format!(
                            "panicked: {}",
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        ),
                        input: input.clone(),
                    }),
                    Ok(()) if largest > alloc_limit(input.len()) => Some(Failure {
                        problem: format!(
                            "allocated {largest} bytes at once (limit {} for its length)",
                            alloc_limit(input.len())
                        ),
                        input: input.clone(),
                    }),
                    Ok(()) => None,
                };
                if tx.send(Msg::Done(failure)).is_err() {
                    return;
                }
            }
        })
        .expect("the fuzzing thread starts");
    let mut failures: Vec<Failure> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut ran = 0;
    loop {
        match rx.recv_timeout(TIME_LIMIT) {
            Ok(Msg::Start(input)) => current = Some(input),
            Ok(Msg::Done(f)) => {
                ran += 1;
                failures.extend(f);
                current = None;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The worker is stuck; it is left behind (the test fails anyway).
                panic!(
                    "fuzz {name}: an input ran past {TIME_LIMIT:?}: {}",
                    current.as_deref().map(show).unwrap_or_default()
                );
            }
        }
    }
    let _ = worker.join();
    eprintln!(
        "fuzz {name}: {ran} inputs in {:.1} s, {} failure(s)",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert_eq!(ran, cases, "fuzz {name}: the worker stopped early");
    if !failures.is_empty() {
        let shown: Vec<String> = failures
            .iter()
            .take(5)
            .map(|f| format!("- {}\n  input {}", f.problem, show(&f.input)))
            .collect();
        panic!(
            "fuzz {name}: {} of {cases} inputs failed:\n{}",
            failures.len(),
            shown.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Targets and their seeds.

fn ir_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = OpKind::ALL
        .iter()
        .flat_map(|&op| {
            let fwd = KernelSpec::example(op);
            let mut bwd = fwd.clone();
            bwd.direction = Direction::Backward;
            [fwd.to_string(), bwd.to_string()]
        })
        .map(String::into_bytes)
        .collect();
    let module = Module {
        kernels: OpKind::ALL
            .iter()
            .map(|&op| KernelSpec::example(op))
            .collect(),
    };
    seeds.push(module.to_string().into_bytes());
    seeds.push(include_bytes!("../../scripts/canonical-cuda.sc").to_vec());
    seeds
}

/// Parse, verify, print and re-parse, cost, lower for an H100: what `check`, `gen` and `run`
/// do with an IR file.
fn ir_target() -> impl FnMut(&[u8]) {
    let opts = LowerOptions::new(DeviceLimits::sm90());
    move |bytes: &[u8]| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        let Ok(module) = text.parse::<Module>() else {
            return;
        };
        let _ = kernels_ir::verify_module(&module);
        let printed = module.to_string();
        let again = printed.parse::<Module>();
        assert!(
            again.as_ref().is_ok_and(|m| *m == module),
            "a parsed module does not survive printing: {printed:?} → {again:?}"
        );
        for spec in &module.kernels {
            if spec.verify().is_ok() {
                let _ = spec.tensors();
                let _ = spec.cost(None);
                let _ = spec.cost(Some(1 << 20));
                let _ = lower(spec, &opts);
            }
        }
    }
}

#[test]
fn fuzz_ir_text_parser_verifier_and_lowering() {
    fuzz("ir", 0x1e, CASES, ir_seeds(), ir_target);
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![sparsecube_train::config::DEFAULT_CONFIG.as_bytes().to_vec()];
    for method in [
        "dense",
        "lora",
        "spt",
        "spt-block",
        "sara",
        "pst",
        "monarch",
        "cbm",
        "nm",
    ] {
        seeds.push(
            format!(
                "[model]\nbatch = 16\nseq_len = 16\nd_model = 32\nheads = 2\nd_ff = 64\n\
                 layers = 2\nvocab = 24\nclasses = 3\nconcepts = 8\nmethod = \"{method}\"\n\
                 [train]\nepochs = 2\nlr = 3e-3\nmax_grad_norm = 1.0\n\
                 [train.methods]\ntopk = 4\nblocks = 4\ntop = 2\n"
            )
            .into_bytes(),
        );
    }
    seeds
}

fn config_target() -> impl FnMut(&[u8]) {
    |bytes: &[u8]| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        if let Ok(cfg) = sparsecube_train::config::ConfigFile::parse(text, "fuzz") {
            let _ = cfg.model.specs();
            let _ = serde_json::to_string(&cfg);
        }
    }
}

#[test]
fn fuzz_training_config() {
    fuzz("config", 0xc0, CASES, config_seeds(), config_target);
}

fn safetensors_bytes(tensors: &[(&str, Vec<usize>, Vec<f32>)], meta: bool) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.to_string(),
                s.clone(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let metadata = meta.then(|| std::collections::HashMap::from([("k".into(), "v".into())]));
    safetensors::serialize(views, metadata).unwrap()
}

fn inputs_seeds() -> Vec<Vec<u8>> {
    let f = |n: usize| (0..n).map(|i| i as f32 * 0.25 - 1.0).collect::<Vec<_>>();
    vec![
        safetensors_bytes(
            &[
                ("x", vec![4, 8], f(32)),
                ("w", vec![6, 8], f(48)),
                ("bias", vec![6], f(6)),
            ],
            false,
        ),
        safetensors_bytes(
            &[
                ("q", vec![1, 1, 4, 4], f(16)),
                ("k", vec![1, 1, 4, 4], f(16)),
                ("v", vec![1, 1, 4, 4], f(16)),
                ("codebook", vec![1, 2, 4], f(8)),
            ],
            true,
        ),
        safetensors_bytes(
            &[("x", vec![2, 4], f(8)), ("w1", vec![2, 2, 2], f(8))],
            false,
        ),
    ]
}

/// What `run` does with an inputs file before executing: read it, infer each op's spec from
/// its shapes.
fn inputs_target() -> impl FnMut(&[u8]) {
    |bytes: &[u8]| {
        let Ok(map) = sparsecube_runtime::io::read_tensors(bytes) else {
            return;
        };
        let shapes: std::collections::BTreeMap<String, Vec<usize>> = map
            .iter()
            .map(|(n, v)| {
                let shape = match v {
                    kernels_ir::reference::Value::F(t) => t.shape.clone(),
                    kernels_ir::reference::Value::I(t) => t.shape.clone(),
                };
                (n.clone(), shape)
            })
            .collect();
        for &op in OpKind::ALL {
            for direction in [Direction::Forward, Direction::Backward] {
                if let Ok(spec) = kernels_ir::infer::spec_for_inputs(op, direction, &[], &shapes) {
                    let _ = spec.tensors();
                }
            }
        }
    }
}

#[test]
fn fuzz_run_inputs_safetensors() {
    fuzz("inputs", 0x5a, CASES, inputs_seeds(), inputs_target);
}

fn tiny_model_config() -> sparsecube_train::config::ConfigFile {
    sparsecube_train::config::ConfigFile::parse(
        "[model]\nbatch = 4\nseq_len = 8\nd_model = 8\nheads = 2\nd_ff = 16\nlayers = 1\n\
         vocab = 12\nclasses = 2\nmethod = \"sara\"\n",
        "the fuzz config",
    )
    .unwrap()
}

/// A SaRA checkpoint of the tiny model, as `finetune` writes it.
fn checkpoint_seed() -> Vec<u8> {
    use sparsecube_train::model::Encoder;
    let cfg = tiny_model_config();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let model = Encoder::<sparsecube_train::Cpu>::init(&cfg.model, 0, &Default::default())
        .with_method(
            &cfg.model,
            sparsecube_train::config::Method::Sara,
            &cfg.train.methods,
            0,
        )
        .unwrap();
    sparsecube_train::finetune::save_checkpoint(
        &model,
        &cfg,
        sparsecube_train::config::Method::Sara,
        0,
        &path,
    )
    .unwrap();
    std::fs::read(&path).unwrap()
}

/// What `--resume` does with a checkpoint: read it, load it into the method's model.
fn checkpoint_target() -> impl FnMut(&[u8]) {
    use sparsecube_train::model::Encoder;
    let cfg = tiny_model_config();
    let model = Encoder::<sparsecube_train::Cpu>::init(&cfg.model, 0, &Default::default())
        .with_method(
            &cfg.model,
            sparsecube_train::config::Method::Sara,
            &cfg.train.methods,
            0,
        )
        .unwrap();
    let path = std::path::PathBuf::from("fuzz.safetensors");
    move |bytes: &[u8]| {
        if let Ok((tensors, _)) = sparsecube_train::checkpoint::from_bytes(bytes, &path) {
            let _ = sparsecube_train::params::load(model.clone(), &tensors);
        }
    }
}

#[test]
fn fuzz_finetune_checkpoints() {
    fuzz(
        "checkpoint",
        0xcc,
        CASES,
        vec![checkpoint_seed()],
        checkpoint_target,
    );
}

/// A Hugging Face BERT checkpoint of the tiny model.
fn bert_seed() -> Vec<u8> {
    let cfg = tiny_model_config();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bert.safetensors");
    let model = sparsecube_train::model::Encoder::<sparsecube_train::Cpu>::init(
        &cfg.model,
        0,
        &Default::default(),
    );
    sparsecube_train::bert::save(&model, &path).unwrap();
    std::fs::read(&path).unwrap()
}

/// What `finetune --checkpoint` does with a BERT file: its sizes, then the encoder.
fn bert_target() -> impl FnMut(&[u8]) {
    let cfg = tiny_model_config();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bert.safetensors");
    move |bytes: &[u8]| {
        let _keep = &dir;
        std::fs::write(&path, bytes).unwrap();
        if let Ok(model) = sparsecube_train::bert::config_of(&path, &cfg.model) {
            let _ = sparsecube_train::bert::load::<sparsecube_train::Cpu>(
                &path,
                &model,
                0,
                &Default::default(),
            );
        }
    }
}

#[test]
fn fuzz_bert_checkpoints() {
    fuzz("bert", 0xbe, CASES / 3, vec![bert_seed()], bert_target);
}

fn tune_identity() -> sparsecube_runtime::tune::DeviceIdentity {
    sparsecube_runtime::tune::DeviceIdentity {
        device: "fuzz".into(),
        driver: "none".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// A cache with two entries, as `tune` writes it.
fn tune_seed() -> Vec<u8> {
    use sparsecube_runtime::tune::{Entry, TuneCache, TuneKey};
    let dir = tempfile::tempdir().unwrap();
    let mut cache = TuneCache::open(dir.path(), tune_identity());
    for op in [OpKind::DenseLinear, OpKind::RoutedFfn] {
        let spec = KernelSpec::example(op);
        cache.insert(
            &TuneKey::of(&spec),
            Entry {
                candidates: vec!["a".into(), "b".into()],
                winner: 1,
                times_ms: vec![Some(2.0), Some(1.0)],
            },
        );
    }
    cache.save().unwrap();
    std::fs::read(cache.path()).unwrap()
}

/// What every tuned launch does with the cache file: open it (corrupt: ignored with a warning),
/// look a key up, write it back.
fn tune_target() -> impl FnMut(&[u8]) {
    use sparsecube_runtime::tune::{TuneCache, TuneKey};
    let dir = tempfile::tempdir().unwrap();
    let key = TuneKey::of(&KernelSpec::example(OpKind::DenseLinear));
    move |bytes: &[u8]| {
        let path = dir.path().join(tune_identity().file_name());
        std::fs::write(&path, bytes).unwrap();
        let cache = TuneCache::open(dir.path(), tune_identity());
        let _ = cache.lookup(&key, &["a".into(), "b".into()]);
        cache.save().unwrap();
        let reopened = TuneCache::open(dir.path(), tune_identity());
        assert!(
            reopened.discarded.is_none(),
            "a saved cache does not read back: {:?}",
            reopened.discarded
        );
    }
}

#[test]
fn fuzz_tuning_cache() {
    fuzz("tune-cache", 0x7c, CASES, vec![tune_seed()], tune_target);
}

fn dsl_seeds() -> Vec<Vec<u8>> {
    [
        "/// Sparse attention.\npub attention: spt_attention(q, k, v, codebook) -> out {\n    pattern = pq_topk(topk = L / 8, selector = pq_match, causal, block = 16),\n    dims = (B, H, L = 128, D = 64),\n    dtype = f32,\n}",
        "pub ffn: routed_ffn(x, w1, b1, w2, b2, wr, br) -> y {\n    pattern = routed(blocks = 4, top = 2, gate = output, act = gelu),\n    dims = (T, d_model = 512, d_ff = 2048),\n}\npub proj: monarch(x, w1, w2) -> y {\n    pattern = monarch(blocks = 4),\n    dims = (N, in = 1024, out = 1024),\n}",
        "pub adapted: sara_linear(x, w, v, bias, index) -> y {\n    pattern = sara(threshold = 2e-3),\n    dims = (T, in, out),\n}",
        "pub pruned: nm_linear(x, v, bias, mask_index) -> y {\n    pattern = nm(n = 2, m = 4),\n    dims = (T, in = 1024, out),\n}",
        "pub masked: pst_linear(x, w, bias, u, v, ma, mb, mr, mc) -> y {\n    pattern = pst(sparsity = 0.9, rank = 8),\n    dims = (T, in = 768, out = 3072),\n    dtype = bf16,\n}",
        "pub head: cbm_head(x, wc, wh, noise) -> logits {\n    pattern = cbm(topk = 32),\n    dims = (B, C = 512, K = 10),\n}",
        "struct Block<B: Backend> {\n    #[sparse(attention = pq_topk(topk = 64))]\n    attn: MultiHeadAttention<B>,\n    #[sparse(ffn = routed(blocks = 4, top = 2))]\n    ffn: Ffn<B>,\n    #[sparse(linear = monarch(blocks = 4))]\n    proj: Linear<B>,\n    #[sparse(adapter = sara(ratio = 0.1))]\n    out: Linear<B>,\n    #[sparse(linear = pst(sparsity = 0.9))]\n    up: Linear<B>,\n    #[sparse(adapter = lora(rank = 8, alpha = 16.0))]\n    down: Linear<B>,\n    head: DenseLinear<B>,\n}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The DSL's two macros on token streams lexed from the mutated text (what rustc hands them).
fn dsl_target() -> impl FnMut(&[u8]) {
    |bytes: &[u8]| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        let Ok(tokens) = text.parse::<proc_macro2::TokenStream>() else {
            return;
        };
        let _ = sparsecube_dsl::kernels(tokens.clone());
        let _ = sparsecube_dsl::sparse_model(tokens);
    }
}

#[test]
fn fuzz_dsl_parser() {
    fuzz("dsl", 0xd5, CASES, dsl_seeds(), dsl_target);
}

/// The long run: `SPARSECUBE_FUZZ_CASES` inputs (default 200 000) per target.
#[test]
#[ignore = "soak: minutes to hours; run with --ignored"]
fn fuzz_soak() {
    let cases = std::env::var("SPARSECUBE_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("SPARSECUBE_FUZZ_SEED")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    fuzz("ir", seed, cases, ir_seeds(), ir_target);
    fuzz("config", seed, cases, config_seeds(), config_target);
    fuzz("inputs", seed, cases, inputs_seeds(), inputs_target);
    fuzz(
        "checkpoint",
        seed,
        cases,
        vec![checkpoint_seed()],
        checkpoint_target,
    );
    fuzz("bert", seed, cases / 10, vec![bert_seed()], bert_target);
    fuzz("tune-cache", seed, cases, vec![tune_seed()], tune_target);
    fuzz("dsl", seed, cases, dsl_seeds(), dsl_target);
}
