//! The DSL's kernels and annotations at run time: the typed launches `sparse_kernel!` generates
//! against the f64 reference executor, their shape checks, and a model with every annotation
//! converted by `from_dense`, trained one step on ndarray, and merged back.

use burn::backend::Autodiff;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kernels_ir::reference::rng::SplitMix64;
use kernels_ir::reference::{self, Value};
use sparsecube_tests::assert_close;
use sparsecube_train::modules::attention::MultiHeadAttention;
use sparsecube_train::modules::ffn::{DenseFfn, Ffn};
use sparsecube_train::modules::linear::{DenseLinear, Linear};
use sparsecube_train::modules::{normal, values};
use sparsecube_train::{SparseModel, sparse_kernel};

type Cpu = sparsecube_train::Cpu;

sparse_kernel! {
    /// The routed FFN of a small layer: 4 blocks, 2 kept per token, GELU.
    pub ffn: routed_ffn(x, w1, b1, w2, b2, wr, br) -> y {
        pattern = routed(blocks = 4, top = 2, gate = output, act = gelu),
        dims = (T, d_model = 32, d_ff = 128),
    }

    /// A 32 → 64 Monarch in 4 blocks.
    pub proj: monarch(x, w1, w2) -> y {
        pattern = monarch(blocks = 4),
        dims = (N, in = 32, out = 64),
    }

    /// PST at sparsity 0.5, rank 4, over symbolic sizes.
    pub masked: pst_linear(x, w, bias, u, v, ma, mb, mr, mc) -> y {
        pattern = pst(sparsity = 0.5, rank = 4),
        dims = (T, in, out),
    }

    /// 2:4 N:M on a 32-input weight (the kept values packed by the caller).
    pub pruned: nm_linear(x, v, bias, mask_index) -> y {
        pattern = nm(n = 2, m = 4),
        dims = (T, in = 32, out),
    }

    /// SPT attention, causal, top L/8.
    pub attention: spt_attention(q, k, v, codebook) -> out {
        pattern = pq_topk(topk = L / 8, selector = pq_match, causal),
        dims = (B, H, L = 32, D = 16),
    }
}

fn host<const D: usize>(t: &Tensor<Cpu, D>) -> reference::Tensor {
    reference::Tensor {
        shape: t.dims().to_vec(),
        data: values(t).iter().map(|&v| f64::from(v)).collect(),
    }
}

/// Runs the reference executor on `spec` with `inputs` and returns output `name`.
fn reference_out(
    spec: &kernels_ir::KernelSpec,
    inputs: Vec<(&str, reference::Tensor)>,
    name: &str,
) -> Vec<f64> {
    let map = inputs
        .into_iter()
        .map(|(n, t)| (n.to_string(), Value::F(t)))
        .collect();
    match reference::run(spec, &map).unwrap().remove(name) {
        Some(Value::F(t)) => t.data,
        other => panic!("no float output {name}: {other:?}"),
    }
}

#[test]
fn generated_launches_match_the_reference_executor() {
    let dev = Default::default();
    let mut rng = SplitMix64::new(77);
    let mut n = |shape: &[usize], std: f64| -> Vec<f32> {
        (0..shape.iter().product::<usize>())
            .map(|_| (rng.normal() * std) as f32)
            .collect()
    };
    let t2 = |d: Vec<f32>, s: [usize; 2]| Tensor::<Cpu, 2>::from_data(TensorData::new(d, s), &dev);
    let t1 = |d: Vec<f32>, s: usize| Tensor::<Cpu, 1>::from_data(TensorData::new(d, [s]), &dev);

    // Routed FFN: T is symbolic (read off x), the rest fixed by the declaration.
    assert_eq!(ffn::spec(24).unwrap().dim("d_ff"), 128);
    let (x, w1, b1) = (
        t2(n(&[24, 32], 1.0), [24, 32]),
        t2(n(&[128, 32], 0.2), [128, 32]),
        t1(n(&[128], 0.1), 128),
    );
    let (w2, b2) = (t2(n(&[32, 128], 0.1), [32, 128]), t1(n(&[32], 0.1), 32));
    let (wr, br) = (t2(n(&[4, 32], 0.5), [4, 32]), t1(n(&[4], 0.1), 4));
    let y = ffn::forward(
        x.clone(),
        w1.clone(),
        b1.clone(),
        w2.clone(),
        b2.clone(),
        wr.clone(),
        br.clone(),
    )
    .unwrap();
    let expected = reference_out(
        &ffn::spec(24).unwrap(),
        vec![
            ("x", host(&x)),
            ("w1", host(&w1)),
            ("b1", host(&b1)),
            ("w2", host(&w2)),
            ("b2", host(&b2)),
            ("wr", host(&wr)),
            ("br", host(&br)),
        ],
        "y",
    );
    assert_close(&host(&y).data, &expected, 1e-5, "routed ffn (DSL)");

    // A wrong shape is refused with the tensor named, before anything runs.
    let e = ffn::forward(x, w1.clone().slice([0..64, 0..32]), b1, w2, b2, wr, br)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`w1` has shape [64, 32]") && e.contains("[128, 32]"),
        "{e}"
    );

    // Monarch: the factor shapes come from blocks = 4 and in/out.
    let spec = proj::spec(10).unwrap();
    let kernels_ir::Pattern::Monarch(m) = spec.pattern else {
        panic!("{:?}", spec.pattern)
    };
    assert_eq!((m.k, m.q, m.p, m.l, m.s, m.r), (4, 8, 8, 4, 16, 8));
    let x = t2(n(&[10, 32], 1.0), [10, 32]);
    let w1 = Tensor::<Cpu, 3>::from_data(TensorData::new(n(&[4, 8, 8], 0.3), [4, 8, 8]), &dev);
    let w2 = Tensor::<Cpu, 3>::from_data(TensorData::new(n(&[4, 16, 8], 0.3), [4, 16, 8]), &dev);
    let y = proj::forward(x.clone(), w1.clone(), w2.clone()).unwrap();
    let expected = reference_out(
        &spec,
        vec![("x", host(&x)), ("w1", host(&w1)), ("w2", host(&w2))],
        "y",
    );
    assert_close(&host(&y).data, &expected, 1e-5, "monarch (DSL)");

    // PST with every size symbolic.
    let spec = masked::spec(9, 24, 20).unwrap();
    let ts: Vec<(&str, Tensor<Cpu, 2>)> = [
        ("x", [9, 24], 1.0),
        ("w", [20, 24], 0.3),
        ("u", [20, 4], 0.3),
        ("v", [4, 24], 0.3),
        ("ma", [20, 8], 0.3),
        ("mb", [8, 24], 0.3),
    ]
    .into_iter()
    .map(|(name, s, std)| (name, t2(n(&s, std), s)))
    .collect();
    let (bias, mr, mc) = (
        t1(n(&[20], 0.1), 20),
        t1(n(&[20], 0.1), 20),
        t1(n(&[24], 0.1), 24),
    );
    let g = |k: &str| {
        ts.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let y = masked::forward(
        g("x"),
        g("w"),
        bias.clone(),
        g("u"),
        g("v"),
        g("ma"),
        g("mb"),
        mr.clone(),
        mc.clone(),
    )
    .unwrap();
    let mut inputs: Vec<(&str, reference::Tensor)> =
        ts.iter().map(|(n, t)| (*n, host(t))).collect();
    inputs.extend([("bias", host(&bias)), ("mr", host(&mr)), ("mc", host(&mc))]);
    assert_close(
        &host(&y).data,
        &reference_out(&spec, inputs, "y"),
        1e-5,
        "pst (DSL)",
    );

    // N:M: the reference packs a dense weight (mask_index, v); the launch takes the packed form.
    let spec = pruned::spec(11, 12).unwrap();
    let (x, w, bias) = (
        t2(n(&[11, 32], 1.0), [11, 32]),
        t2(n(&[12, 32], 0.3), [12, 32]),
        t1(n(&[12], 0.1), 12),
    );
    let map = [("x", host(&x)), ("w", host(&w)), ("bias", host(&bias))]
        .into_iter()
        .map(|(n, t)| (n.to_string(), Value::F(t)))
        .collect();
    let want = reference::run(&spec, &map).unwrap();
    let (Some(Value::I(index)), Some(Value::F(v)), Some(Value::F(y_ref))) =
        (want.get("mask_index"), want.get("v"), want.get("y"))
    else {
        panic!("nm-linear reference outputs: {want:?}")
    };
    assert_eq!(index.data.len(), 12 * 32 / 2);
    let v = t1(v.data.iter().map(|&x| x as f32).collect(), v.data.len());
    let index = Tensor::<Cpu, 1, burn::tensor::Int>::from_data(
        TensorData::new(index.data.clone(), [index.data.len()]),
        &dev,
    );
    let y = pruned::forward(x, v, bias, index).unwrap();
    assert_close(&host(&y).data, &y_ref.data, 1e-5, "nm (DSL)");

    // SPT attention: B and H from q; a sequence length other than the declared L is refused.
    let q4 = |l: usize, rng: &mut SplitMix64| {
        let d: Vec<f32> = (0..2 * 2 * l * 16).map(|_| rng.normal() as f32).collect();
        Tensor::<Cpu, 4>::from_data(TensorData::new(d, [2, 2, l, 16]), &dev)
    };
    let mut rng = SplitMix64::new(5);
    let (q, k, v) = (q4(32, &mut rng), q4(32, &mut rng), q4(32, &mut rng));
    let cb: Vec<f32> = (0..2 * 16 * 8).map(|_| rng.normal() as f32).collect();
    let codebook = Tensor::<Cpu, 3>::from_data(TensorData::new(cb, [2, 16, 8]), &dev);
    let out = attention::forward(q.clone(), k.clone(), v.clone(), codebook.clone()).unwrap();
    let spec = attention::spec(2, 2).unwrap();
    let h4 = |t: &Tensor<Cpu, 4>| reference::Tensor {
        shape: t.dims().to_vec(),
        data: values(t).iter().map(|&x| f64::from(x)).collect(),
    };
    let h3 = |t: &Tensor<Cpu, 3>| reference::Tensor {
        shape: t.dims().to_vec(),
        data: values(t).iter().map(|&x| f64::from(x)).collect(),
    };
    let expected = reference_out(
        &spec,
        vec![
            ("q", h4(&q)),
            ("k", h4(&k)),
            ("v", h4(&v)),
            ("codebook", h3(&codebook)),
        ],
        "out",
    );
    assert_close(
        &values(&out)
            .iter()
            .map(|&x| f64::from(x))
            .collect::<Vec<_>>(),
        &expected,
        1e-5,
        "spt attention (DSL)",
    );
    let short = q4(16, &mut rng);
    let e = attention::forward(short.clone(), short.clone(), short, codebook)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`q` has shape [2, 2, 16, 16]"), "{e}");
}

/// A user's model: every annotation of the DSL on the training runtime's modules.
#[derive(Module, Debug, SparseModel)]
struct Tiny<B: Backend> {
    #[sparse(attention = pq_topk(topk = 4))]
    attn: MultiHeadAttention<B>,
    #[sparse(ffn = routed(blocks = 4, top = 2, act = gelu))]
    ffn: Ffn<B>,
    #[sparse(linear = monarch(blocks = 4))]
    proj: Linear<B>,
    #[sparse(adapter = sara(ratio = 0.2))]
    out: Linear<B>,
    #[sparse(linear = pst(sparsity = 0.5, rank = 4))]
    up: Linear<B>,
    #[sparse(adapter = lora(rank = 4))]
    down: Linear<B>,
    #[sparse(linear = nm(n = 2, m = 4))]
    pruned: Linear<B>,
    head: DenseLinear<B>,
}

const D: usize = 32;

impl<B: sparsecube_train::SparseBackend> Tiny<B> {
    fn dense(seed: u64, device: &B::Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut lin = |i: usize, o: usize| {
            Linear::Dense(DenseLinear::new(
                normal(&mut rng, [o, i], 0.2, device),
                normal(&mut rng, [o], 0.1, device),
            ))
        };
        Self {
            attn: MultiHeadAttention {
                query: lin(D, D),
                key: lin(D, D),
                value: lin(D, D),
                output: lin(D, D),
                spt: None,
                heads: 2,
                causal: false,
            },
            ffn: Ffn::Dense(DenseFfn {
                intermediate: lin(D, 4 * D),
                output: lin(4 * D, D),
            }),
            proj: lin(D, 2 * D),
            out: lin(2 * D, D),
            up: lin(D, 2 * D),
            down: lin(2 * D, D),
            pruned: lin(D, D),
            head: DenseLinear::init(D, 3, &mut SplitMix64::new(seed + 1), device),
        }
    }

    /// Logits [batch, 3] of x [batch·seq, D].
    fn forward(&self, x: Tensor<B, 2>, batch: usize, seq: usize) -> Tensor<B, 2> {
        let h = x.clone() + self.attn.forward(x, batch, seq, None, false).y;
        let h = h.clone() + self.ffn.forward(h);
        let h = self.out.forward(self.proj.forward(h));
        let h = self.down.forward(self.up.forward(h));
        let h = self.pruned.forward(h);
        let pooled = h.reshape([batch, seq, D]).mean_dim(1).reshape([batch, D]);
        self.head.forward(pooled)
    }
}

#[test]
fn an_annotated_model_converts_trains_one_step_and_merges() {
    type A = Autodiff<Cpu>;
    let dev = Default::default();
    assert_eq!(Tiny::<A>::SPARSE_FIELDS.len(), 7);
    assert_eq!(
        Tiny::<A>::SPARSE_FIELDS[2],
        ("proj", "linear = monarch(blocks = 4)")
    );
    let dense = Tiny::<A>::dense(3, &dev);
    let mut model = Tiny::from_dense(&dense).unwrap();
    assert!(model.attn.spt.is_some());
    assert!(matches!(model.ffn, Ffn::Routed(_)));
    assert!(matches!(model.proj, Linear::Monarch(_)));
    assert!(matches!(model.out, Linear::Sara(_)));
    assert!(matches!(model.up, Linear::Pst(_)));
    assert!(matches!(model.down, Linear::Lora(_)));
    assert!(matches!(model.pruned, Linear::Nm(_)));
    let (trainable, total) = sparsecube_train::params::counts(&model);
    assert!(trainable < total, "{trainable} of {total}");

    // One training step on ndarray: finite loss, the trained tensors move, the frozen ones not.
    let (batch, seq) = (4, 32);
    let x = normal::<A, 2>(&mut SplitMix64::new(9), [batch * seq, D], 1.0, &dev);
    let labels = Tensor::<A, 1, burn::tensor::Int>::from_data(
        TensorData::new(vec![0i64, 1, 2, 1], [4]),
        &dev,
    );
    let loss =
        sparsecube_train::finetune::cross_entropy(model.forward(x.clone(), batch, seq), labels);
    let first: f32 = loss.clone().into_scalar();
    assert!(first.is_finite());
    let before = sparsecube_train::params::named(&model);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut optim = AdamWConfig::new().init::<A, Tiny<A>>();
    model = optim.step(1e-2, model, grads);
    let after = sparsecube_train::params::named(&model);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.name, a.name);
        if b.trainable && b.name != "attn.spt.codebook" {
            assert_ne!(b.values, a.values, "{} did not move", b.name);
        } else if !b.trainable {
            assert_eq!(b.values, a.values, "{} is frozen but moved", b.name);
        }
    }
    let second: f32 = sparsecube_train::finetune::cross_entropy(
        model.forward(x.clone(), batch, seq),
        Tensor::from_data(TensorData::new(vec![0i64, 1, 2, 1], [4]), &dev),
    )
    .into_scalar();
    assert!(
        second < first,
        "one step did not lower the loss: {first} → {second}"
    );

    // merge(): every annotated linear dense again and computing the same map.
    let merged = model.merge();
    for (name, sparse, dense) in [
        ("proj", &model.proj, &merged.proj),
        ("out", &model.out, &merged.out),
        ("up", &model.up, &merged.up),
        ("down", &model.down, &merged.down),
        ("pruned", &model.pruned, &merged.pruned),
    ] {
        assert!(matches!(dense, Linear::Dense(_)), "{name}");
        let n_in = if name == "out" || name == "down" {
            2 * D
        } else {
            D
        };
        let probe = normal::<A, 2>(&mut SplitMix64::new(4), [6, n_in], 1.0, &dev);
        let a: Vec<f64> = values(&sparse.forward(probe.clone()))
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let b: Vec<f64> = values(&dense.forward(probe))
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        assert_close(&b, &a, 1e-5, &format!("merged {name}"));
    }
    assert!(merged.attn.spt.is_none());
    assert!(matches!(merged.ffn, Ffn::Dense(_)));
    // A field that is already sparse is refused with the reason.
    let e = Tiny::from_dense(&model).unwrap_err().to_string();
    assert!(e.contains("already"), "{e}");
}
