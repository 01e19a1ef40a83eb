//! The training runtime's modules: forward values and every parameter's gradient on the CubeCL
//! backend (wgpu: our kernels, forward and backward) against the ndarray backend (the tensor-op
//! composition of METHODS.md, differentiated by Burn's autodiff), from identical weights and
//! inputs; relative error ≤ 1e-4 norm-wise.

use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use kernels_ir::pattern::{Activation, Cbm, Nm, PqTopK, Pst, Routed, SaraSelect, TopK};
use kernels_ir::reference::rng::SplitMix64;
use sparsecube_tests::{assert_close, wgpu_or_skip};
use sparsecube_train::SparseBackend;
use sparsecube_train::modules::{
    ConceptBottleneck, DenseLinear, LoraLinear, MonarchLinear, NmLinear, PstLinear, RoutedFfn,
    SaraLinear, SptAttention, normal, values,
};
use sparsecube_train::params::gradients;
use std::collections::BTreeMap;

pub(crate) type Cpu = Autodiff<sparsecube_train::Cpu>;
pub(crate) type Gpu = Autodiff<sparsecube_train::Wgpu>;

/// One quiet fine-tuning run of `method` on `cfg` on the CPU, checkpointing to `out` (None: no
/// checkpoints), resuming from it when asked.
pub(crate) fn finetune_cpu(
    cfg: &sparsecube_train::config::ConfigFile,
    method: sparsecube_train::config::Method,
    out: Option<&std::path::Path>,
    resume: bool,
) -> Result<sparsecube_train::finetune::RunReport, sparsecube_train::TrainError> {
    let none = || None;
    let mut progress = |_: sparsecube_train::finetune::Event| {};
    sparsecube_train::finetune::finetune::<Cpu>(
        cfg,
        &Default::default(),
        sparsecube_train::finetune::RunOptions {
            method,
            device_name: "cpu".into(),
            out_dir: out.map(std::path::Path::to_path_buf),
            resume,
            progress: &mut progress,
            memory_in_use: &none,
            stop: None,
        },
    )
}

const TOL: f64 = 1e-4;

/// Forward values, the gradient of every input, and of every parameter by name.
pub(crate) struct Run {
    pub(crate) y: Vec<f32>,
    pub(crate) inputs: Vec<Vec<f32>>,
    pub(crate) params: BTreeMap<String, Vec<f32>>,
}

pub(crate) fn host(data: &[f32]) -> Vec<f64> {
    data.iter().map(|&v| f64::from(v)).collect()
}

/// Builds the module on `B`, feeds it `inputs` (drawn from the seed), takes the loss
/// Σ y ⊙ dy (+ the module's auxiliary loss) and backpropagates.
fn run<B, M, const DI: usize, const DO: usize>(
    device: &B::Device,
    seed: u64,
    shapes: &[[usize; DI]],
    build: impl FnOnce(&mut SplitMix64, &B::Device) -> M,
    forward: impl FnOnce(&M, Vec<Tensor<B, DI>>) -> (Tensor<B, DO>, Option<Tensor<B, 1>>),
) -> Run
where
    B: AutodiffBackend + SparseBackend,
    M: Module<B>,
{
    let mut rng = SplitMix64::new(seed);
    let module = build(&mut rng, device);
    let inputs: Vec<Tensor<B, DI>> = shapes
        .iter()
        .map(|&s| normal::<B, DI>(&mut rng, s, 1.0, device).require_grad())
        .collect();
    let (y, aux) = forward(&module, inputs.clone());
    let dy = normal::<B, DO>(&mut rng, y.dims(), 1.0, device);
    let mut loss = (y.clone() * dy).sum();
    if let Some(aux) = aux {
        loss = loss + aux;
    }
    let grads = loss.backward();
    Run {
        y: values(&y),
        inputs: inputs
            .iter()
            .map(|x| x.grad(&grads).map(|g| values(&g)).unwrap_or_default())
            .collect(),
        params: gradients(&module, &grads),
    }
}

fn compare(what: &str, gpu: Run, cpu: Run) {
    compare_with(what, gpu, cpu, true);
}

/// `nonzero`: every gradient must have a non-zero entry (module tests draw their weights so that
/// it does; a model at its initialisation has exact zeros, e.g. LoRA's A while B = 0).
pub(crate) fn compare_with(what: &str, gpu: Run, cpu: Run, nonzero: bool) {
    assert_close(
        &host(&gpu.y),
        &host(&cpu.y),
        TOL,
        &format!("{what}: forward"),
    );
    for (i, (g, c)) in gpu.inputs.iter().zip(&cpu.inputs).enumerate() {
        assert!(
            !c.is_empty(),
            "{what}: input {i} has no gradient on ndarray"
        );
        assert_close(&host(g), &host(c), TOL, &format!("{what}: d input {i}"));
    }
    assert_eq!(
        gpu.params.keys().collect::<Vec<_>>(),
        cpu.params.keys().collect::<Vec<_>>(),
        "{what}: the parameters with gradients differ"
    );
    assert!(
        !cpu.params.is_empty(),
        "{what}: no parameter got a gradient"
    );
    for (name, c) in &cpu.params {
        if nonzero {
            let any = c.iter().any(|v| *v != 0.0);
            assert!(
                any,
                "{what}: the gradient of {name} is all zeros (a weak test)"
            );
        }
        assert_close(
            &host(&gpu.params[name]),
            &host(c),
            TOL,
            &format!("{what}: d {name}"),
        );
    }
}

/// Runs one case on both backends and compares.
macro_rules! case {
    ($test:literal, $seed:expr, $shapes:expr, $build:expr, $forward:expr) => {{
        let Some(_) = wgpu_or_skip($test) else { return };
        let gpu = run::<Gpu, _, _, _>(&Default::default(), $seed, $shapes, $build, $forward);
        let cpu = run::<Cpu, _, _, _>(&Default::default(), $seed, $shapes, $build, $forward);
        compare($test, gpu, cpu);
    }};
}

fn dense<B: burn::tensor::backend::Backend>(
    rng: &mut SplitMix64,
    n_in: usize,
    n_out: usize,
    device: &B::Device,
) -> DenseLinear<B> {
    DenseLinear::new(
        normal(rng, [n_out, n_in], 1.0 / (n_in as f64).sqrt(), device),
        normal(rng, [n_out], 0.1, device),
    )
}

#[test]
fn sara_linear_matches_the_composition() {
    case!(
        "sara_linear_matches_the_composition",
        11,
        &[[37, 48]],
        |rng, dev| SaraLinear::from_dense(dense(rng, 48, 40, dev), SaraSelect::Ratio(0.2)).unwrap(),
        |m: &SaraLinear<_>, x: Vec<Tensor<_, 2>>| (m.forward(x[0].clone()), None)
    );
}

#[test]
fn pst_linear_matches_the_composition() {
    // Factors drawn non-zero (the paper starts V, B, R, C at 0, where half the gradients vanish).
    fn build<B: burn::tensor::backend::Backend>(
        rng: &mut SplitMix64,
        dev: &B::Device,
    ) -> PstLinear<B> {
        let pattern = Pst {
            sparsity: 0.5,
            rank: 4,
            mask_rank: 3,
            ..Pst::default()
        };
        let mut m = PstLinear::from_dense(dense(rng, 48, 40, dev), pattern, rng).unwrap();
        let set = |p: burn::module::Param<Tensor<B, 2>>, rng: &mut SplitMix64| {
            p.map(|t| normal(rng, t.dims(), 0.3, dev).require_grad())
        };
        m.v = set(m.v, rng);
        m.mb = set(m.mb, rng);
        m.mr = m.mr.map(|t| normal(rng, t.dims(), 0.1, dev).require_grad());
        m.mc = m.mc.map(|t| normal(rng, t.dims(), 0.1, dev).require_grad());
        m.at_step(100, 100)
    }
    case!(
        "pst_linear_matches_the_composition",
        12,
        &[[37, 48]],
        build,
        |m: &PstLinear<_>, x: Vec<Tensor<_, 2>>| (m.forward(x[0].clone()), None)
    );
}

#[test]
fn monarch_linear_matches_the_composition() {
    case!(
        "monarch_linear_matches_the_composition",
        13,
        &[[21, 32]],
        |rng, dev| MonarchLinear::from_dense(dense(rng, 32, 64, dev), 4).unwrap(),
        |m: &MonarchLinear<_>, x: Vec<Tensor<_, 2>>| (m.forward(x[0].clone()), None)
    );
}

#[test]
fn nm_linear_matches_the_composition() {
    // 2:4 on 48 inputs, and 1:3 (n < m/2, groups of an odd size).
    for (seed, n, m) in [(17, 2, 4), (18, 1, 3)] {
        case!(
            "nm_linear_matches_the_composition",
            seed,
            &[[29, 48]],
            |rng, dev| NmLinear::from_dense(dense(rng, 48, 24, dev), Nm { n, m }).unwrap(),
            |m: &NmLinear<_>, x: Vec<Tensor<_, 2>>| (m.forward(x[0].clone()), None)
        );
    }
}

#[test]
fn lora_linear_matches_the_composition() {
    fn build<B: burn::tensor::backend::Backend>(
        rng: &mut SplitMix64,
        dev: &B::Device,
    ) -> LoraLinear<B> {
        let mut m = LoraLinear::from_dense(dense(rng, 32, 24, dev), 4, 8.0, rng);
        m.b = m.b.map(|t| normal(rng, t.dims(), 0.1, dev).require_grad());
        m
    }
    case!(
        "lora_linear_matches_the_composition",
        14,
        &[[19, 32]],
        build,
        |m: &LoraLinear<_>, x: Vec<Tensor<_, 2>>| (m.forward(x[0].clone()), None)
    );
}

#[test]
fn routed_ffn_matches_the_composition() {
    fn build<B: burn::tensor::backend::Backend>(
        rng: &mut SplitMix64,
        dev: &B::Device,
    ) -> RoutedFfn<B> {
        let pattern = Routed {
            act: Activation::Gelu,
            ..Routed::default()
        };
        let mut m = RoutedFfn::from_dense(
            dense(rng, 32, 128, dev),
            dense(rng, 128, 32, dev),
            pattern,
            rng,
        )
        .unwrap();
        m.wr = m.wr.map(|t| normal(rng, t.dims(), 0.5, dev).require_grad());
        m
    }
    case!(
        "routed_ffn_matches_the_composition",
        15,
        &[[29, 32]],
        build,
        |m: &RoutedFfn<_>, x: Vec<Tensor<_, 2>>| (m.forward(x[0].clone()), None)
    );
}

#[test]
fn spt_attention_matches_the_composition() {
    // q, k, v [B, H, L, D] = [2, 2, 32, 16]: two sub-vectors of 8 per head, topk = L/8 = 4; and
    // the codebook's auxiliary loss on q and k.
    let pattern = PqTopK::default();
    case!(
        "spt_attention_matches_the_composition",
        16,
        &[[2, 2, 32, 16], [2, 2, 32, 16], [2, 2, 32, 16]],
        |rng, dev| SptAttention::new(pattern, 32, 16, 1.0, rng, dev).unwrap(),
        |m: &SptAttention<_>, x: Vec<Tensor<_, 4>>| {
            let aux = m.codebook_loss(x[0].clone()) + m.codebook_loss(x[1].clone());
            (
                m.forward(x[0].clone(), x[1].clone(), x[2].clone()),
                Some(aux),
            )
        }
    );
}

#[test]
fn causal_spt_attention_matches_the_composition() {
    let pattern = PqTopK {
        causal: true,
        ..PqTopK::default()
    };
    case!(
        "causal_spt_attention_matches_the_composition",
        17,
        &[[1, 2, 40, 16], [1, 2, 40, 16], [1, 2, 40, 16]],
        |rng, dev| SptAttention::new(pattern, 40, 16, 1.0, rng, dev).unwrap(),
        |m: &SptAttention<_>, x: Vec<Tensor<_, 4>>| {
            let aux = m.codebook_loss(x[1].clone());
            (
                m.forward(x[0].clone(), x[1].clone(), x[2].clone()),
                Some(aux),
            )
        }
    );
}

/// Block-granular selection (G 16, causal, a ragged last block): the diagonal block is always
/// kept, so every row attends to itself.
#[test]
fn block_spt_attention_matches_the_composition() {
    let pattern = PqTopK {
        topk: TopK::Fixed(20),
        causal: true,
        block: 16,
        ..PqTopK::default()
    };
    case!(
        "block_spt_attention_matches_the_composition",
        19,
        &[[1, 2, 40, 16], [1, 2, 40, 16], [1, 2, 40, 16]],
        |rng, dev| SptAttention::new(pattern, 40, 16, 1.0, rng, dev).unwrap(),
        |m: &SptAttention<_>, x: Vec<Tensor<_, 4>>| {
            let aux = m.codebook_loss(x[0].clone());
            (
                m.forward(x[0].clone(), x[1].clone(), x[2].clone()),
                Some(aux),
            )
        }
    );
}

#[test]
fn concept_bottleneck_matches_the_composition() {
    case!(
        "concept_bottleneck_matches_the_composition",
        18,
        &[[12, 24]],
        |rng, dev| ConceptBottleneck::new(24, 16, 5, Cbm { topk: 4 }, rng, dev).unwrap(),
        |m: &ConceptBottleneck<_>, x: Vec<Tensor<_, 2>>| {
            let out = m.forward(x[0].clone(), false);
            (out.logits, Some(out.aux))
        }
    );
}

/// The constructors' typed errors: a SaRA rule that selects nothing, Monarch blocks that do not
/// divide, an SPT head dim the PQ sub-vectors do not divide.
#[test]
fn module_constructors_reject_bad_configurations() {
    type B = sparsecube_train::Cpu;
    let dev = Default::default();
    let mut rng = SplitMix64::new(3);
    let big = DenseLinear::<B>::new(
        Tensor::from_data(TensorData::new(vec![1.0f32; 16], [4, 4]), &dev),
        Tensor::zeros([4], &dev),
    );
    let e = SaraLinear::from_dense(big, SaraSelect::Threshold(2e-3))
        .unwrap_err()
        .to_string();
    assert!(e.contains("selects none") && e.contains("ratio"), "{e}");
    let e = MonarchLinear::from_dense(dense::<B>(&mut rng, 30, 64, &dev), 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("divide"), "{e}");
    let e = SptAttention::<B>::new(PqTopK::default(), 32, 12, 1.0, &mut rng, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("12"), "{e}");
}
