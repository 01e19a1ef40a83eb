//! The verifier: checks a spec against every constraint of METHODS.md and returns **all** the
//! problems at once, each naming the field, the value and the constraint it breaks.

use crate::op::{Direction, OpKind};
use crate::pattern::{Pattern, SaraSelect, TopK};
use crate::schedule::{Knob, Schedule};
use crate::spec::{KernelSpec, Module};
use std::fmt;

/// One broken constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// The kernel's name.
    pub kernel: String,
    /// The part of the spec at fault (`routed`, `dims`, `schedule`, ...).
    pub field: String,
    /// The value and the constraint, e.g. `d_ff = 3000 is not divisible by blocks = 7`.
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel `{}`: {}: {}",
            self.kernel, self.field, self.message
        )
    }
}

/// Every problem the verifier found, in spec order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} error{} in the kernel spec:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

struct Report<'a> {
    kernel: &'a str,
    errors: Vec<VerifyError>,
}

impl Report<'_> {
    fn err(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(VerifyError {
            kernel: self.kernel.to_string(),
            field: field.to_string(),
            message: message.into(),
        });
    }
    fn check(&mut self, ok: bool, field: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.err(field, message());
        }
    }
    fn positive(&mut self, field: &str, name: &str, v: usize) -> bool {
        self.check(v >= 1, field, || format!("{name} = {v} must be at least 1"));
        v >= 1
    }
    fn divides(&mut self, field: &str, (an, a): (&str, usize), (bn, b): (&str, usize)) {
        if b >= 1 {
            self.check(a % b == 0, field, || {
                format!("{an} = {a} is not divisible by {bn} = {b}")
            });
        }
    }
    fn in_range(&mut self, field: &str, name: &str, v: f64, lo: f64, hi: f64, hi_open: bool) {
        let ok = v >= lo && if hi_open { v < hi } else { v <= hi };
        let close = if hi_open { ")" } else { "]" };
        self.check(ok, field, || {
            format!("{name} = {v} is outside [{lo}, {hi}{close}")
        });
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Verifies one spec.
pub fn verify_spec(spec: &KernelSpec) -> Result<(), VerifyErrors> {
    let mut r = Report {
        kernel: &spec.name,
        errors: Vec::new(),
    };
    check_spec(spec, &mut r);
    if r.errors.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors(r.errors))
    }
}

/// Verifies every kernel of a module, and that names are unique.
pub fn verify_module(module: &Module) -> Result<(), VerifyErrors> {
    let mut all = Vec::new();
    for (i, spec) in module.kernels.iter().enumerate() {
        let mut r = Report {
            kernel: &spec.name,
            errors: Vec::new(),
        };
        if module.kernels[..i].iter().any(|k| k.name == spec.name) {
            r.err(
                "name",
                format!(
                    "`{}` is already the name of an earlier kernel; rename one",
                    spec.name
                ),
            );
        }
        check_spec(spec, &mut r);
        all.extend(r.errors);
    }
    if all.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors(all))
    }
}

/// The most elements the dims (and a Monarch's matrix) may describe: see `check_spec`.
const MAX_ELEMENTS: u128 = 1 << 63;
/// The largest Monarch factor (k, q, p, l, s, r): n_in·n_out then stays below 2^60.
const MAX_MONARCH: usize = 1 << 15;

fn check_spec(spec: &KernelSpec, r: &mut Report<'_>) {
    r.check(is_identifier(&spec.name), "name", || {
        format!(
            "`{}` is not an identifier (letters, digits, `_`; not starting with a digit)",
            spec.name
        )
    });
    r.check(spec.dtype.is_float(), "dtype", || {
        format!(
            "{} is an index type; a kernel's dtype must be f32, f16 or bf16",
            spec.dtype
        )
    });
    if spec.direction == Direction::Backward && !spec.op.has_backward() {
        r.err(
            "direction",
            format!("{} has no backward (it is not differentiated)", spec.op),
        );
    }

    // Dims: every one the op needs, each at least 1, nothing unknown.
    let own = spec.op.dim_names();
    for name in own {
        match spec.dims.get(*name) {
            None => r.err(
                "dims",
                format!("`{name}` is missing ({} needs {})", spec.op, own.join(", ")),
            ),
            Some(&v) => {
                r.positive("dims", name, v);
            }
        }
    }
    for name in spec.dims.keys() {
        if !own.contains(&name.as_str()) {
            let expected = if own.is_empty() {
                "none".to_string()
            } else {
                own.join(", ")
            };
            r.err(
                "dims",
                format!("`{name}` is not a dim of {} (expected {expected})", spec.op),
            );
        }
    }

    // Sizes: every length the op, its cost and its lowering compute is a product of some dims
    // (L twice, plus one, for attention's score tables; Monarch's n_in·n_out), so one bound on
    // the product keeps all of them inside a u64, whatever the numbers written.
    let monarch = match &spec.pattern {
        Pattern::Monarch(m) => [m.k, m.p, m.l, m.s, m.q, m.r],
        _ => [1; 6],
    };
    let elements = spec
        .dims
        .values()
        .chain(&monarch[..4])
        .fold(1u128, |acc, &d| acc.saturating_mul(d.max(1) as u128))
        .saturating_mul(spec.dims.get("L").map_or(1, |&l| l as u128 + 1));
    if monarch.iter().any(|&v| v > MAX_MONARCH) {
        r.err(
            "pattern",
            format!(
                "a Monarch factor (k, q, p, l, s, r) is more than {MAX_MONARCH}: n_in·n_out would pass 2^60; use smaller blocks"
            ),
        );
    } else if elements > MAX_ELEMENTS {
        r.err(
            "dims",
            format!(
                "{} describes more than 2^63 elements (its dims{}): no device holds it; use smaller sizes",
                spec.op,
                if matches!(spec.pattern, Pattern::Monarch(_)) {
                    " × Monarch's n_in·n_out"
                } else {
                    ""
                }
            ),
        );
    }

    let expected = spec.op.pattern_kind();
    if spec.pattern.kind() != expected {
        r.err(
            "pattern",
            format!(
                "{} needs a `{expected}` pattern, got `{}`",
                spec.op,
                spec.pattern.kind()
            ),
        );
    } else {
        check_pattern(spec, r);
    }
    check_schedule(spec, r);
}

fn check_pattern(spec: &KernelSpec, r: &mut Report<'_>) {
    let d = |n: &str| spec.dims.get(n).copied().unwrap_or(0);
    match &spec.pattern {
        Pattern::Dense => {}
        Pattern::PqTopK(p) => {
            let f = "pq-topk";
            r.positive(f, "sub_dim", p.sub_dim);
            r.positive(f, "codewords", p.codewords);
            r.divides(f, ("D", d("D")), ("sub_dim", p.sub_dim));
            r.check(
                p.block == 1 || (p.block >= 16 && p.block.is_power_of_two()),
                f,
                || {
                    format!(
                        "block = {} must be 1 (a key per query row) or a power of two ≥ 16 \
                         (rows per selected block), e.g. 64",
                        p.block
                    )
                },
            );
            // One block of G ≥ L rows already holds the whole sequence; a larger G only pads
            // every row's key list (kb·G slots), so it is bounded (generously, for short L).
            let widest = d("L")
                .max(1)
                .checked_next_power_of_two()
                .unwrap_or(usize::MAX)
                .max(1024);
            if p.block > 1 {
                r.check(p.block <= widest, f, || {
                    format!(
                        "block = {} is more than {widest}, the largest that means anything for \
                         L = {} (one block then holds the whole sequence); use block ≤ {widest}",
                        p.block,
                        d("L")
                    )
                });
            }
            if let TopK::SeqFraction(0) = p.topk {
                r.err(f, "topk = L/0 divides by zero; use L/n with n ≥ 1");
            }
            if spec.op == crate::op::OpKind::SptAttention {
                let k = spec.topk();
                let l = d("L");
                r.check(k >= 1, f, || {
                    format!("topk = {} resolves to {k}; it must be at least 1", p.topk)
                });
                if l >= 1 {
                    r.check(k <= l, f, || {
                        format!("topk = {} resolves to {k}, more than L = {l}", p.topk)
                    });
                }
            }
        }
        Pattern::Routed(p) => {
            let f = "routed";
            if r.positive(f, "blocks", p.blocks) {
                r.divides(f, ("d_ff", d("d_ff")), ("blocks", p.blocks));
                r.check(p.top >= 1 && p.top <= p.blocks, f, || {
                    format!(
                        "top = {} must be between 1 and blocks = {}",
                        p.top, p.blocks
                    )
                });
            }
            r.check(p.gate_scale.is_finite() && p.gate_scale > 0.0, f, || {
                format!(
                    "gate_scale = {} must be a positive finite number",
                    p.gate_scale
                )
            });
        }
        Pattern::Monarch(m) => {
            let f = "monarch";
            for (n, v) in [
                ("k", m.k),
                ("q", m.q),
                ("p", m.p),
                ("l", m.l),
                ("s", m.s),
                ("r", m.r),
            ] {
                r.positive(f, n, v);
            }
            let (kq, lr) = (m.k as u128 * m.q as u128, m.l as u128 * m.r as u128);
            r.check(kq == lr, f, || {
                format!(
                    "k·q = {}·{} = {kq} must equal l·r = {}·{} = {lr}",
                    m.k, m.q, m.l, m.r,
                )
            });
        }
        Pattern::BlockDiagonal(b) => {
            let f = "block-diagonal";
            if r.positive(f, "blocks", b.blocks) {
                r.divides(f, ("in", d("in")), ("blocks", b.blocks));
                r.divides(f, ("out", d("out")), ("blocks", b.blocks));
            }
        }
        Pattern::Sara(s) => match s.select {
            SaraSelect::Threshold(t) => r.check(t.is_finite() && t > 0.0, "sara", || {
                format!("threshold = {t} must be a positive finite number")
            }),
            SaraSelect::Ratio(q) => r.check(q > 0.0 && q <= 1.0, "sara", || {
                format!("ratio = {q} is outside (0, 1]")
            }),
        },
        Pattern::Pst(p) => {
            let f = "pst";
            r.in_range(f, "sparsity", p.sparsity, 0.0, 1.0, true);
            r.positive(f, "rank", p.rank);
            r.positive(f, "mask_rank", p.mask_rank);
            for (n, v) in [("alpha1", p.alpha1), ("alpha2", p.alpha2), ("beta", p.beta)] {
                r.check(v.is_finite(), f, || format!("{n} = {v} must be finite"));
            }
            r.in_range(f, "s0", p.schedule.s0, 0.0, 1.0, true);
            r.in_range(f, "warmup", p.schedule.warmup, 0.0, 1.0, false);
            r.in_range(f, "cooldown", p.schedule.cooldown, 0.0, 1.0, false);
            let span = p.schedule.warmup + p.schedule.cooldown;
            r.check(span <= 1.0, f, || {
                format!("warmup + cooldown = {span} exceeds 1 (the schedule has no room to ramp)")
            });
        }
        Pattern::Nm(nm) => {
            let f = "nm";
            if r.positive(f, "m", nm.m) {
                r.positive(f, "n", nm.n);
                r.check(nm.n <= nm.m, f, || {
                    format!(
                        "n = {} is more than m = {} (n of every m are kept)",
                        nm.n, nm.m
                    )
                });
                r.divides(f, ("in", d("in")), ("m", nm.m));
            }
        }
        Pattern::Cbm(c) => {
            let cc = d("C");
            if cc >= 1 {
                r.check(c.topk <= cc, "cbm", || {
                    format!(
                        "topk = {} is more than C = {cc} concepts (0 keeps all)",
                        c.topk
                    )
                });
            }
        }
    }
}

fn check_schedule(spec: &KernelSpec, r: &mut Report<'_>) {
    for message in schedule_problems(spec.op, &spec.schedule) {
        r.err("schedule", message);
    }
}

/// What is wrong with schedule `s` for `op`: general ranges for every op, and for ops on the tile
/// program the tile sizes, the loader's vector width and the shared memory it stages through.
pub(crate) fn schedule_problems(op: OpKind, s: &Schedule) -> Vec<String> {
    let mut out = Vec::new();
    // Knobs already out of every op's range get one message, not a second op-specific one.
    let mut out_of_range: Vec<&str> = Vec::new();
    for (n, v) in [
        ("tile_m", s.tile_m),
        ("tile_n", s.tile_n),
        ("tile_k", s.tile_k),
    ] {
        if !(v.is_power_of_two() && v <= 256) {
            out.push(format!(
                "{n} = {v} must be a power of two between 1 and 256"
            ));
            out_of_range.push(n);
        }
    }
    if !matches!(s.vector, 1 | 2 | 4 | 8) {
        out.push(format!("vector = {} must be 1, 2, 4 or 8", s.vector));
        out_of_range.push("vector");
    }
    if !(1..=4).contains(&s.stages) {
        out.push(format!("stages = {} must be between 1 and 4", s.stages));
        out_of_range.push("stages");
    }
    if !(s.lanes.is_power_of_two() && s.lanes <= 32) {
        out.push(format!(
            "lanes = {} must be a power of two between 1 and 32",
            s.lanes
        ));
    }
    if op.tiled() {
        let mn = Knob::TILE_MN;
        for (n, v) in [("tile_m", s.tile_m), ("tile_n", s.tile_n)] {
            if !mn.contains(&v) && !out_of_range.contains(&n) {
                out.push(format!(
                    "{n} = {v} is not a tile size of {op}'s tile program; use one of {mn:?}"
                ));
            }
        }
        let ks = Knob::TILE_K;
        if !ks.contains(&s.tile_k) && !out_of_range.contains(&"tile_k") {
            out.push(format!(
                "tile_k = {} is not a slice depth of {op}'s tile program; use one of {ks:?}",
                s.tile_k
            ));
        }
        let vector_known = Knob::VECTOR.contains(&s.vector);
        if !vector_known && !out_of_range.contains(&"vector") {
            out.push(format!(
                "vector = {} is not a load width of {op}'s tile program; use one of {:?}",
                s.vector,
                Knob::VECTOR
            ));
        }
        let slice = u64::from(s.tile_k) * u64::from(s.tile_m.min(s.tile_n));
        let per_load = u64::from(Knob::TILE_UNITS) * u64::from(s.vector);
        if vector_known && slice % per_load != 0 {
            out.push(format!(
                "vector = {} needs tile_k·min(tile_m, tile_n) = {slice} to be a multiple of \
                 {per_load} (256 units × vector); use a smaller vector or larger tiles",
                s.vector
            ));
        }
        if !Knob::STAGES.contains(&s.stages) && !out_of_range.contains(&"stages") {
            out.push(format!(
                "stages = {} is not a pipeline depth of {op}'s tile program; use 1 or 2",
                s.stages
            ));
        }
        let shared = s.tile_shared_bytes();
        if shared > u64::from(Knob::TILE_SHARED_BYTES) {
            out.push(format!(
                "stages·tile_k·(tile_m + tile_n + 2)·4 = {shared} bytes of shared memory per cube \
                 is more than {}; use smaller tiles or stages = 1",
                Knob::TILE_SHARED_BYTES
            ));
        }
    }
    out
}
