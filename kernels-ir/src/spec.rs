//! Kernel specs: op + direction + dtype + pattern + problem sizes + schedule, the unit that the
//! verifier checks, the text format prints, codegen lowers and the reference executor runs.

use crate::dtype::DType;
use crate::op::{Direction, Extent, OpKind, Role, TensorSpec};
use crate::pattern::{Pattern, PatternKind, SaraSelect};
use crate::schedule::Schedule;
use crate::verify::{VerifyErrors, verify_spec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A fully described kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelSpec {
    /// Identifier, unique within a [`Module`].
    pub name: String,
    /// What it computes.
    pub op: OpKind,
    /// Forward outputs or backward gradients.
    pub direction: Direction,
    /// Storage dtype of the floating-point tensors.
    pub dtype: DType,
    /// The sparsity pattern (algorithm).
    pub pattern: Pattern,
    /// Named problem sizes (`B`, `L`, `d_model`, ...; see [`OpKind::dim_names`]).
    pub dims: BTreeMap<String, usize>,
    /// Tiling choices (never change the result).
    pub schedule: Schedule,
}

/// An ordered list of kernel specs: what an IR text file holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Module {
    /// The kernels, in file order.
    pub kernels: Vec<KernelSpec>,
}

/// Work and storage of a kernel next to its dense counterpart (forward pass unless noted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Floating-point operations of the sparse kernel (a multiply-add counts 2).
    pub flops: u64,
    /// Floating-point operations of the dense baseline.
    pub dense_flops: u64,
    /// Entries the method keeps or trains (kept attention scores, active FFN weights, factor
    /// parameters, trainable values, kept concepts).
    pub nnz: u64,
    /// The same count for the dense baseline.
    pub dense_nnz: u64,
}

impl KernelSpec {
    /// An example problem of `op` at a moderate size (a layer of a small transformer: 512–1024
    /// wide, 256–1024 rows), f32, forward, the op's default pattern (Monarch: 1024 → 1024 in 4
    /// blocks): what `sparsecube gen` and `sparsecube tune` use for the sizes and pattern
    /// arguments not given on their command line.
    pub fn example(op: OpKind) -> KernelSpec {
        use crate::pattern::{MonarchShape, Pattern};
        let dims: &[(&str, usize)] = match op {
            OpKind::SptAttention => &[("B", 2), ("H", 4), ("L", 256), ("D", 64)],
            OpKind::PqEncode => &[("N", 1024), ("D", 64)],
            OpKind::RoutedFfn => &[("T", 512), ("d_model", 512), ("d_ff", 2048)],
            OpKind::Monarch => &[("N", 512)],
            OpKind::MonarchProject => &[],
            OpKind::BlockDiagLinear => &[("N", 512), ("in", 1024), ("out", 1024)],
            OpKind::SaraLinear | OpKind::PstLinear | OpKind::DenseLinear | OpKind::NmLinear => {
                &[("T", 512), ("in", 1024), ("out", 1024)]
            }
            OpKind::CbmHead => &[("B", 256), ("C", 512), ("K", 10)],
        };
        let mut b = KernelSpec::builder(op.name().replace('-', "_"), op);
        if matches!(op, OpKind::Monarch | OpKind::MonarchProject) {
            b = b.pattern(Pattern::Monarch(MonarchShape::square(1024, 4)));
        }
        for (n, v) in dims {
            b = b.dim(n, *v);
        }
        // Every example verifies (tested); building it cannot fail.
        match b.build() {
            Ok(spec) => spec,
            Err(e) => unreachable!("the example of {op} does not verify: {e}"),
        }
    }

    /// Starts a builder for `op` named `name`, with the op's default pattern, f32, forward.
    pub fn builder(name: impl Into<String>, op: OpKind) -> KernelSpecBuilder {
        KernelSpecBuilder {
            spec: KernelSpec {
                name: name.into(),
                op,
                direction: Direction::Forward,
                dtype: DType::F32,
                pattern: Pattern::Dense,
                dims: BTreeMap::new(),
                schedule: Schedule::default(),
            },
            pattern_set: false,
        }
    }

    /// A dim, or 0 when absent (the verifier reports absent dims; callers run it first).
    pub fn dim(&self, name: &str) -> usize {
        self.dims.get(name).copied().unwrap_or(0)
    }

    /// The spec's dims in canonical order: the op's own first, then any others by name.
    pub fn dims_in_order(&self) -> Vec<(&str, usize)> {
        let own = self.op.dim_names();
        let mut out: Vec<(&str, usize)> = own
            .iter()
            .filter_map(|n| self.dims.get(*n).map(|v| (*n, *v)))
            .collect();
        out.extend(
            self.dims
                .iter()
                .filter(|(n, _)| !own.contains(&n.as_str()))
                .map(|(n, v)| (n.as_str(), *v)),
        );
        out
    }

    /// Checks the spec; see [`crate::verify`].
    pub fn verify(&self) -> Result<(), VerifyErrors> {
        verify_spec(self)
    }

    /// Keys kept per query row (spt-attention), after resolving `L/n`.
    pub fn topk(&self) -> usize {
        match self.pattern {
            Pattern::PqTopK(p) => p.topk.resolve(self.dim("L")),
            _ => 0,
        }
    }

    /// The shape of spt-attention's `indices`: [B, H, L, topk] kept keys, or with `block` G > 1
    /// [B, H, ⌈L/G⌉, ⌈topk/G⌉] kept key blocks (METHODS.md §7). Empty for other ops.
    pub fn spt_index_shape(&self) -> Vec<usize> {
        let d = |n: &str| self.dim(n);
        match self.pattern {
            Pattern::PqTopK(p) if p.block > 1 => vec![
                d("B"),
                d("H"),
                p.blocks_of(d("L")),
                p.kept_blocks(self.topk()),
            ],
            Pattern::PqTopK(_) => vec![d("B"), d("H"), d("L"), self.topk()],
            _ => Vec::new(),
        }
    }

    /// The tensors the kernel reads and writes, with shapes resolved from the dims. Verifies
    /// the spec first: shapes of an invalid spec mean nothing.
    pub fn tensors(&self) -> Result<Vec<TensorSpec>, VerifyErrors> {
        self.verify()?;
        Ok(self.signature())
    }

    fn signature(&self) -> Vec<TensorSpec> {
        let f = self.dtype;
        let d = |n: &str| self.dim(n);
        let mut t = Sig { list: Vec::new() };
        match (self.op, &self.pattern) {
            (OpKind::SptAttention, Pattern::PqTopK(p)) => {
                let qkv = [d("B"), d("H"), d("L"), d("D")];
                for n in ["q", "k", "v"] {
                    t.input(n, &qkv, f);
                }
                t.input(
                    "codebook",
                    &[d("D") / p.sub_dim.max(1), p.codewords, p.sub_dim],
                    f,
                );
                t.forward_or_grads(
                    self.direction,
                    "dout",
                    &qkv,
                    f,
                    |t| {
                        t.output("out", &qkv, f);
                        t.output("indices", &self.spt_index_shape(), DType::I64);
                    },
                    &[("dq", &qkv), ("dk", &qkv), ("dv", &qkv)],
                );
            }
            (OpKind::PqEncode, Pattern::PqTopK(p)) => {
                let s = d("D") / p.sub_dim.max(1);
                t.input("x", &[d("N"), d("D")], f);
                t.input("codebook", &[s, p.codewords, p.sub_dim], f);
                t.output("codes", &[d("N"), s], DType::I64);
            }
            (OpKind::RoutedFfn, Pattern::Routed(r)) => {
                let (tk, dm, dff, e) = (d("T"), d("d_model"), d("d_ff"), r.blocks);
                t.input("x", &[tk, dm], f);
                t.input("w1", &[dff, dm], f);
                t.input("b1", &[dff], f);
                t.input("w2", &[dm, dff], f);
                t.input("b2", &[dm], f);
                t.input("wr", &[e, dm], f);
                t.input("br", &[e], f);
                t.forward_or_grads(
                    self.direction,
                    "dy",
                    &[tk, dm],
                    f,
                    |t| {
                        t.output("y", &[tk, dm], f);
                        t.output("blocks", &[tk, r.top], DType::I64);
                    },
                    &[
                        ("dx", &[tk, dm]),
                        ("dw1", &[dff, dm]),
                        ("db1", &[dff]),
                        ("dw2", &[dm, dff]),
                        ("db2", &[dm]),
                        ("dwr", &[e, dm]),
                        ("dbr", &[e]),
                    ],
                );
            }
            (OpKind::Monarch, Pattern::Monarch(m)) => {
                let n = d("N");
                let (x, w1, w2, y) = (
                    [n, m.n_in()],
                    [m.k, m.q, m.p],
                    [m.l, m.s, m.r],
                    [n, m.n_out()],
                );
                t.input("x", &x, f);
                t.input("w1", &w1, f);
                t.input("w2", &w2, f);
                t.forward_or_grads(
                    self.direction,
                    "dy",
                    &y,
                    f,
                    |t| t.output("y", &y, f),
                    &[("dx", &x), ("dw1", &w1), ("dw2", &w2)],
                );
            }
            (OpKind::MonarchProject, Pattern::Monarch(m)) => {
                t.input("w", &[m.n_out(), m.n_in()], f);
                t.output("w1", &[m.k, m.q, m.p], f);
                t.output("w2", &[m.l, m.s, m.r], f);
            }
            (OpKind::BlockDiagLinear, Pattern::BlockDiagonal(b)) => {
                let nb = b.blocks.max(1);
                let (x, w, y) = (
                    [d("N"), d("in")],
                    [b.blocks, d("out") / nb, d("in") / nb],
                    [d("N"), d("out")],
                );
                t.input("x", &x, f);
                t.input("w", &w, f);
                t.forward_or_grads(
                    self.direction,
                    "dy",
                    &y,
                    f,
                    |t| t.output("y", &y, f),
                    &[("dx", &x), ("dw", &w)],
                );
            }
            (OpKind::SaraLinear, Pattern::Sara(_)) => {
                let (tk, i, o) = (d("T"), d("in"), d("out"));
                t.input("x", &[tk, i], f);
                t.input("w", &[o, i], f);
                t.input("bias", &[o], f);
                t.list.push(TensorSpec {
                    name: "v".into(),
                    shape: vec![Extent::Nnz],
                    dtype: f,
                    role: Role::Input,
                    optional: true,
                });
                t.forward_or_grads(
                    self.direction,
                    "dy",
                    &[tk, o],
                    f,
                    |t| {
                        t.output("y", &[tk, o], f);
                        t.output_nnz("mask_index", DType::I64);
                        t.output_nnz("v", f);
                    },
                    &[("dx", &[tk, i]), ("dbias", &[o])],
                );
                if self.direction == Direction::Backward {
                    t.output_nnz("dv", f);
                }
            }
            (OpKind::PstLinear, Pattern::Pst(p)) => {
                let (tk, i, o, r, rm) = (d("T"), d("in"), d("out"), p.rank, p.mask_rank);
                let ins: [(&str, Vec<usize>); 9] = [
                    ("x", vec![tk, i]),
                    ("w", vec![o, i]),
                    ("bias", vec![o]),
                    ("u", vec![o, r]),
                    ("v", vec![r, i]),
                    ("ma", vec![o, rm]),
                    ("mb", vec![rm, i]),
                    ("mr", vec![o]),
                    ("mc", vec![i]),
                ];
                for (n, s) in &ins {
                    t.input(n, s, f);
                }
                t.forward_or_grads(
                    self.direction,
                    "dy",
                    &[tk, o],
                    f,
                    |t| {
                        t.output("y", &[tk, o], f);
                        t.output("mask", &[o, i], f);
                    },
                    &[
                        ("dx", &[tk, i]),
                        ("dbias", &[o]),
                        ("du", &[o, r]),
                        ("dv", &[r, i]),
                        ("dma", &[o, rm]),
                        ("dmb", &[rm, i]),
                        ("dmr", &[o]),
                        ("dmc", &[i]),
                    ],
                );
            }
            (OpKind::CbmHead, Pattern::Cbm(_)) => {
                let (b, c, k) = (d("B"), d("C"), d("K"));
                t.input("x", &[b, c], f);
                t.input("wc", &[c, c], f);
                t.input("wh", &[k, c], f);
                t.list.push(TensorSpec {
                    name: "noise".into(),
                    shape: vec![Extent::Fixed(b), Extent::Fixed(c)],
                    dtype: f,
                    role: Role::Input,
                    optional: true,
                });
                t.forward_or_grads(
                    self.direction,
                    "dlogits",
                    &[b, k],
                    f,
                    |t| {
                        t.output("z", &[b, c], f);
                        t.output("logits", &[b, k], f);
                    },
                    &[("dx", &[b, c]), ("dwc", &[c, c]), ("dwh", &[k, c])],
                );
            }
            (OpKind::NmLinear, Pattern::Nm(nm)) => {
                let (tk, i, o) = (d("T"), d("in"), d("out"));
                let kept = o * i / nm.m.max(1) * nm.n;
                t.input("x", &[tk, i], f);
                t.input("w", &[o, i], f);
                t.input("bias", &[o], f);
                t.list.push(TensorSpec {
                    name: "v".into(),
                    shape: vec![Extent::Fixed(kept)],
                    dtype: f,
                    role: Role::Input,
                    optional: true,
                });
                t.forward_or_grads(
                    self.direction,
                    "dy",
                    &[tk, o],
                    f,
                    |t| {
                        t.output("y", &[tk, o], f);
                        t.output("mask_index", &[kept], DType::I64);
                        t.output("v", &[kept], f);
                    },
                    &[("dx", &[tk, i]), ("dv", &[kept]), ("dbias", &[o])],
                );
            }
            (OpKind::DenseLinear, Pattern::Dense) => {
                let (tk, i, o) = (d("T"), d("in"), d("out"));
                t.input("x", &[tk, i], f);
                t.input("w", &[o, i], f);
                t.input("bias", &[o], f);
                t.forward_or_grads(
                    self.direction,
                    "dy",
                    &[tk, o],
                    f,
                    |t| t.output("y", &[tk, o], f),
                    &[("dx", &[tk, i]), ("dw", &[o, i]), ("dbias", &[o])],
                );
            }
            // The verifier rejects a pattern of the wrong family before we get here.
            _ => {}
        }
        t.list
    }

    /// Work and storage next to the dense baseline. `nnz` overrides the count of a data-dependent
    /// selection (SaRA's threshold mask); without it a threshold mask is costed as empty.
    pub fn cost(&self, nnz: Option<usize>) -> Result<Cost, VerifyErrors> {
        self.verify()?;
        // In f64: the counts are estimates, and no product of written sizes can overflow one
        // (the conversion back saturates).
        let d = |n: &str| self.dim(n) as f64;
        let c = match (self.op, &self.pattern) {
            (OpKind::SptAttention, Pattern::PqTopK(p)) => {
                let (rows, dd, l) = (d("B") * d("H") * d("L"), d("D"), d("L"));
                // Block-granular selection attends to every key of the kept blocks.
                let kept = (p.kept_blocks(self.topk()) as f64 * p.block.max(1) as f64).min(l);
                // Encode q and k (L1 distance to every codeword) + select (S compares per pair).
                let encode = 4.0 * rows * dd * p.codewords as f64;
                // (Blocks: one score per (query block, key block), plus the block means.)
                let g = p.block.max(1) as f64;
                let select = (rows / g).ceil() * (l / g).ceil() * (dd / p.sub_dim as f64).floor()
                    + if g > 1.0 { 2.0 * rows * dd } else { 0.0 };
                Raw {
                    flops: encode + select + 4.0 * rows * kept * dd,
                    dense_flops: 4.0 * rows * l * dd,
                    nnz: rows * kept,
                    dense_nnz: rows * l,
                }
            }
            (OpKind::PqEncode, Pattern::PqTopK(p)) => {
                let f = 2.0 * d("N") * d("D") * p.codewords as f64;
                Raw {
                    flops: f,
                    dense_flops: f,
                    nnz: d("N") * d("D"),
                    dense_nnz: d("N") * d("D"),
                }
            }
            (OpKind::RoutedFfn, Pattern::Routed(r)) => {
                let (t, dm, dff) = (d("T"), d("d_model"), d("d_ff"));
                let bs = (dff / r.blocks as f64).floor();
                Raw {
                    flops: 2.0 * t * dm * r.blocks as f64 + 4.0 * t * r.top as f64 * dm * bs,
                    dense_flops: 4.0 * t * dm * dff,
                    nnz: t * r.top as f64 * bs,
                    dense_nnz: t * dff,
                }
            }
            (OpKind::Monarch, Pattern::Monarch(m)) => Raw {
                flops: 2.0 * d("N") * m.params() as f64,
                dense_flops: 2.0 * d("N") * m.n_in() as f64 * m.n_out() as f64,
                nnz: m.params() as f64,
                dense_nnz: m.n_in() as f64 * m.n_out() as f64,
            },
            (OpKind::MonarchProject, Pattern::Monarch(m)) => {
                let n = m.n_in() as f64 * m.n_out() as f64;
                Raw {
                    flops: 0.0,
                    dense_flops: 0.0,
                    nnz: m.params() as f64,
                    dense_nnz: n,
                }
            }
            (OpKind::BlockDiagLinear, Pattern::BlockDiagonal(b)) => {
                let full = d("in") * d("out");
                let kept = (full / b.blocks as f64).floor();
                Raw {
                    flops: 2.0 * d("N") * kept,
                    dense_flops: 2.0 * d("N") * full,
                    nnz: kept,
                    dense_nnz: full,
                }
            }
            (OpKind::SaraLinear, Pattern::Sara(s)) => {
                let full = d("in") * d("out");
                let kept = match (nnz, s.select) {
                    (Some(n), _) => n as f64,
                    (None, SaraSelect::Ratio(r)) => (r * full).floor(),
                    (None, SaraSelect::Threshold(_)) => 0.0,
                };
                // Forward is a dense GEMM either way; the backward weight gradient is sampled.
                Raw {
                    flops: 2.0 * d("T") * full + 2.0 * d("T") * kept,
                    dense_flops: 4.0 * d("T") * full,
                    nnz: kept,
                    dense_nnz: full,
                }
            }
            (OpKind::PstLinear, Pattern::Pst(p)) => {
                let (i, o) = (d("in"), d("out"));
                let (r, rm) = (p.rank as f64, p.mask_rank as f64);
                Raw {
                    flops: 2.0 * d("T") * i * o + 2.0 * o * i * (r + rm) + 4.0 * o * i,
                    dense_flops: 2.0 * d("T") * i * o,
                    nnz: o * r + r * i + o * rm + rm * i + o + i,
                    dense_nnz: o * i,
                }
            }
            (OpKind::CbmHead, Pattern::Cbm(cb)) => {
                let (b, c, k) = (d("B"), d("C"), d("K"));
                let kept = if cb.topk == 0 { c } else { cb.topk as f64 };
                Raw {
                    flops: 2.0 * b * c * c + 2.0 * b * kept * k,
                    dense_flops: 2.0 * b * c * c + 2.0 * b * c * k,
                    nnz: b * kept,
                    dense_nnz: b * c,
                }
            }
            (OpKind::NmLinear, Pattern::Nm(nm)) => {
                let full = d("in") * d("out");
                let kept = (full / nm.m as f64).floor() * nm.n as f64;
                // The products run over the packed weight; the sampled gradient is a full tile
                // product written at the kept positions only.
                Raw {
                    flops: 2.0 * d("T") * kept,
                    dense_flops: 2.0 * d("T") * full,
                    nnz: kept,
                    dense_nnz: full,
                }
            }
            (OpKind::DenseLinear, Pattern::Dense) => {
                let full = d("in") * d("out");
                Raw {
                    flops: 2.0 * d("T") * full,
                    dense_flops: 2.0 * d("T") * full,
                    nnz: full,
                    dense_nnz: full,
                }
            }
            _ => unreachable!("verify() rejects a pattern of the wrong family"),
        };
        Ok(c.counts())
    }
}

/// [`Cost`] in f64, while it is computed.
struct Raw {
    flops: f64,
    dense_flops: f64,
    nnz: f64,
    dense_nnz: f64,
}

impl Raw {
    /// Rounded to counts (`as` saturates: a cost past u64 reads u64::MAX).
    fn counts(self) -> Cost {
        Cost {
            flops: self.flops as u64,
            dense_flops: self.dense_flops as u64,
            nnz: self.nnz as u64,
            dense_nnz: self.dense_nnz as u64,
        }
    }
}

struct Sig {
    list: Vec<TensorSpec>,
}

fn fixed(shape: &[usize]) -> Vec<Extent> {
    shape.iter().map(|&n| Extent::Fixed(n)).collect()
}

impl Sig {
    fn push(&mut self, name: &str, shape: Vec<Extent>, dtype: DType, role: Role) {
        self.list.push(TensorSpec {
            name: name.into(),
            shape,
            dtype,
            role,
            optional: false,
        });
    }
    fn input(&mut self, name: &str, shape: &[usize], dtype: DType) {
        self.push(name, fixed(shape), dtype, Role::Input);
    }
    fn output(&mut self, name: &str, shape: &[usize], dtype: DType) {
        self.push(name, fixed(shape), dtype, Role::Output);
    }
    fn output_nnz(&mut self, name: &str, dtype: DType) {
        self.push(name, vec![Extent::Nnz], dtype, Role::Output);
    }
    /// Forward: the outputs `fwd` declares. Backward: the upstream gradient as an input and the
    /// listed gradients as outputs.
    fn forward_or_grads(
        &mut self,
        direction: Direction,
        upstream: &str,
        upstream_shape: &[usize],
        dtype: DType,
        fwd: impl FnOnce(&mut Sig),
        grads: &[(&str, &[usize])],
    ) {
        match direction {
            Direction::Forward => fwd(self),
            Direction::Backward => {
                self.input(upstream, upstream_shape, dtype);
                for (n, s) in grads {
                    self.output(n, s, dtype);
                }
            }
        }
    }
}

/// Builds a [`KernelSpec`] and verifies it: `build` returns every problem at once.
#[derive(Clone, Debug)]
pub struct KernelSpecBuilder {
    spec: KernelSpec,
    pattern_set: bool,
}

impl KernelSpecBuilder {
    /// Sets one named problem size.
    pub fn dim(mut self, name: &str, value: usize) -> Self {
        self.spec.dims.insert(name.to_string(), value);
        self
    }
    /// Sets several named problem sizes.
    pub fn dims<'a>(mut self, dims: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        for (n, v) in dims {
            self.spec.dims.insert(n.to_string(), v);
        }
        self
    }
    /// Sets the pattern (default: the op family's published defaults).
    pub fn pattern(mut self, pattern: Pattern) -> Self {
        self.spec.pattern = pattern;
        self.pattern_set = true;
        self
    }
    /// Sets the storage dtype (default f32).
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.spec.dtype = dtype;
        self
    }
    /// Sets forward or backward (default forward).
    pub fn direction(mut self, direction: Direction) -> Self {
        self.spec.direction = direction;
        self
    }
    /// Sets the schedule (default [`Schedule::default`]).
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.spec.schedule = schedule;
        self
    }
    /// Verifies and returns the spec, or every problem found.
    pub fn build(mut self) -> Result<KernelSpec, VerifyErrors> {
        if !self.pattern_set {
            // Every family but Monarch has published defaults; Monarch's sizes are required and
            // the verifier says so.
            let kind = self.spec.op.pattern_kind();
            if kind != PatternKind::Monarch {
                self.spec.pattern = Pattern::from_args(kind, vec![])
                    .expect("defaults of a non-Monarch family always parse");
            }
        }
        self.spec.verify()?;
        Ok(self.spec)
    }
}
