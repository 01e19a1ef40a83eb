//! The backend extension: one forward and one backward entry point taking a [`SparseOp`] (which
//! op, with its pattern) and the op's tensors in a fixed order, implemented three ways:
//!
//! - Burn's CubeCL backends ([`CubeBackend`] over wgpu or CUDA) launch the generated kernels of
//!   `sparsecube-codegen` on the tensors' buffers (`crate::cube`);
//! - ndarray runs the op as a composition of Burn tensor ops that follows METHODS.md
//!   (`crate::compose`), its backward being Burn's autodiff of that composition;
//! - [`Autodiff`] over a kernel backend records one graph node per op whose backward launches the
//!   backward kernels; over ndarray it records the composition op by op.
//!
//! A module calls [`sparse`] and gets a `Tensor`; it never sees which of the three ran.

use burn::backend::NdArray;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorPrimitive};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use kernels_ir::OpKind;
use kernels_ir::pattern::{Cbm, MonarchShape, Nm, PqTopK, Pst, Routed};

/// One sparse op with everything about it that is not a tensor. The tensors each op takes, in
/// order, are listed per variant (`inputs` / `ints` of [`SparseBackend::sparse_forward`]).
#[derive(Clone, Debug, PartialEq)]
pub enum SparseOp {
    /// SPT attention (METHODS.md §1): inputs `[q, k, v [B, H, L, D], codebook [S, E, d_c]]`
    /// (the codebook selects, it is not differentiated); out [B, H, L, D].
    SptAttention(PqTopK),
    /// Routed FFN (§2): inputs `[x [T, dm], w1 [dff, dm], b1 [dff], w2 [dm, dff], b2 [dm],
    /// wr [E, dm], br [E]]`; y [T, dm].
    RoutedFfn(Routed),
    /// Monarch (§3): inputs `[x [N, n_in], w1 [k, q, p], w2 [l, s, r]]`; y [N, n_out].
    Monarch(MonarchShape),
    /// SaRA linear (§4): inputs `[x [T, in], w [out, in] (frozen), v [nnz], bias [out]]`, ints
    /// `[index [nnz]]` (flat positions of `v` in `w`, ascending); y [T, out].
    Sara,
    /// PST linear (§5) at the sparsity of this step (`Pst::sparsity`): inputs `[x [T, in],
    /// w [out, in] (frozen), bias [out], u [out, r], v [r, in], ma [out, rm], mb [rm, in],
    /// mr [out], mc [in]]`; y [T, out].
    Pst(Pst),
    /// Sparse-CBM head (§6): inputs `[x [B, C], wc [C, C], wh [K, C], noise [B, C]]` (the
    /// noise only perturbs the selection; all zeros for none); logits [B, K].
    CbmHead(Cbm),
    /// N:M linear (§8) over a fixed mask: inputs `[x [T, in], v [nnz], bias [out]]`, ints
    /// `[mask_index [nnz]]` (the kept flat positions of the [out, in] weight, ascending, `n` of
    /// every `m`); y [T, out].
    Nm(Nm),
}

impl SparseOp {
    /// The op's name in the IR (`monarch`, `sara-linear`, ...).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The op's kind in the IR.
    pub fn kind(&self) -> OpKind {
        match self {
            SparseOp::SptAttention(_) => OpKind::SptAttention,
            SparseOp::RoutedFfn(_) => OpKind::RoutedFfn,
            SparseOp::Monarch(_) => OpKind::Monarch,
            SparseOp::Sara => OpKind::SaraLinear,
            SparseOp::Pst(_) => OpKind::PstLinear,
            SparseOp::CbmHead(_) => OpKind::CbmHead,
            SparseOp::Nm(_) => OpKind::NmLinear,
        }
    }

    /// The inputs the op never differentiates: the frozen dense weight of SaRA and PST, SPT's
    /// codebook (it selects keys), CBM's selection noise.
    pub fn frozen(&self, input: usize) -> bool {
        match self {
            SparseOp::Sara | SparseOp::Pst(_) => input == 1,
            SparseOp::SptAttention(_) | SparseOp::CbmHead(_) => input == 3,
            SparseOp::RoutedFfn(_) | SparseOp::Monarch(_) | SparseOp::Nm(_) => false,
        }
    }
}

/// A Burn backend that can run every [`SparseOp`].
pub trait SparseBackend: Backend {
    /// Whether this backend launches sparsecube's generated kernels (else: the composition).
    const KERNELS: bool;

    /// Whether Burn moves a tensor from one of this backend's devices to another
    /// (`to_device`), which burn-collective's in-process all-reduce relies on. burn-cubecl 0.21
    /// moves through the runtime's server-to-server copy, which cubecl's CUDA runtime has and its
    /// wgpu runtime lacks (it panics): data-parallel replicas on wgpu exchange through the host.
    const MOVES_BETWEEN_DEVICES: bool;

    /// What a forward keeps for its backward.
    type Saved: Clone + Send + core::fmt::Debug + 'static;

    /// Runs `op` forward on its float `inputs` and integer `ints` (orders: see [`SparseOp`]);
    /// returns the output and what the backward needs.
    fn sparse_forward(
        op: &SparseOp,
        inputs: Vec<FloatTensor<Self>>,
        ints: Vec<IntTensor<Self>>,
    ) -> (FloatTensor<Self>, Self::Saved);

    /// The gradient of every float input (None for frozen ones) for the upstream gradient `dy`,
    /// from what [`SparseBackend::sparse_forward`] saved.
    fn sparse_backward(
        op: &SparseOp,
        saved: Self::Saved,
        ints: Vec<IntTensor<Self>>,
        dy: FloatTensor<Self>,
    ) -> Vec<Option<FloatTensor<Self>>>;
}

/// Runs `op` on tensors: the one call modules make. `inputs` are the float tensors as
/// primitives (see [`float`]), `ints` the integer ones.
pub fn sparse<B: SparseBackend, const D: usize>(
    op: &SparseOp,
    inputs: Vec<FloatTensor<B>>,
    ints: Vec<Tensor<B, 1, Int>>,
) -> Tensor<B, D> {
    let ints = ints.into_iter().map(|t| t.into_primitive()).collect();
    let (y, _) = B::sparse_forward(op, inputs, ints);
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The float primitive of a tensor (what [`sparse`] takes).
pub fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

impl<E, I, Q> SparseBackend for NdArray<E, I, Q>
where
    NdArray<E, I, Q>: Backend,
    burn::backend::ndarray::NdArrayTensor: From<burn::backend::ndarray::SharedArray<E>>,
    burn::backend::ndarray::NdArrayTensor: From<burn::backend::ndarray::SharedArray<I>>,
{
    const KERNELS: bool = false;
    const MOVES_BETWEEN_DEVICES: bool = true;
    type Saved = Vec<FloatTensor<Self>>;

    fn sparse_forward(
        op: &SparseOp,
        inputs: Vec<FloatTensor<Self>>,
        ints: Vec<IntTensor<Self>>,
    ) -> (FloatTensor<Self>, Self::Saved) {
        let y = crate::compose::forward::<Self>(op, inputs.clone(), ints);
        (y, inputs)
    }

    fn sparse_backward(
        op: &SparseOp,
        saved: Self::Saved,
        ints: Vec<IntTensor<Self>>,
        dy: FloatTensor<Self>,
    ) -> Vec<Option<FloatTensor<Self>>> {
        composition_backward::<Self>(op, saved, ints, dy)
    }
}

/// The backward of the composition by Burn's autodiff: the gradient of Σ y ⊙ dy.
fn composition_backward<B: Backend>(
    op: &SparseOp,
    saved: Vec<FloatTensor<B>>,
    ints: Vec<IntTensor<B>>,
    dy: FloatTensor<B>,
) -> Vec<Option<FloatTensor<B>>> {
    type A<B> = Autodiff<B>;
    let inputs: Vec<FloatTensor<A<B>>> = saved
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let p = <A<B> as AutodiffBackend>::from_inner(p);
            if op.frozen(i) {
                p
            } else {
                A::<B>::float_set_require_grad(p, true)
            }
        })
        .collect();
    let y = crate::compose::forward::<A<B>>(op, inputs.clone(), ints);
    let dy = <A<B> as AutodiffBackend>::from_inner(dy);
    let loss = A::<B>::float_sum(A::<B>::float_mul(y, dy));
    let grads = A::<B>::backward(loss);
    inputs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if op.frozen(i) {
                None
            } else {
                A::<B>::grad(p, &grads)
            }
        })
        .collect()
}

impl<R, F, I, BT> SparseBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    const KERNELS: bool = true;
    const MOVES_BETWEEN_DEVICES: bool =
        <R::Server as cubecl::server::ServerCommunication>::SERVER_COMM_ENABLED;
    type Saved = crate::cube::Saved<R>;

    fn sparse_forward(
        op: &SparseOp,
        inputs: Vec<FloatTensor<Self>>,
        ints: Vec<IntTensor<Self>>,
    ) -> (FloatTensor<Self>, Self::Saved) {
        crate::cube::forward::<R, F, I>(op, inputs, ints)
    }

    fn sparse_backward(
        op: &SparseOp,
        saved: Self::Saved,
        ints: Vec<IntTensor<Self>>,
        dy: FloatTensor<Self>,
    ) -> Vec<Option<FloatTensor<Self>>> {
        let _ = ints;
        crate::cube::backward::<R, F>(op, saved, dy)
    }
}

/// The graph node of one op on a kernel backend: its backward launches the backward kernels.
#[derive(Debug)]
struct OpBackward<const N: usize> {
    op: SparseOp,
}

/// What the node keeps: the forward's saved tensors and the op's integer inputs.
#[derive(Clone, Debug)]
struct OpState<B: SparseBackend> {
    saved: B::Saved,
    ints: Vec<IntTensor<B>>,
}

impl<B: SparseBackend, const N: usize> Backward<B, N> for OpBackward<N> {
    type State = OpState<B>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let OpState { saved, ints } = ops.state;
        let input_grads = B::sparse_backward(&self.op, saved, ints, dy);
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Records one kernel op with `N` float inputs on the graph.
fn tracked<B: SparseBackend, C: CheckpointStrategy, const N: usize>(
    op: &SparseOp,
    inputs: Vec<FloatTensor<Autodiff<B, C>>>,
    ints: Vec<IntTensor<B>>,
) -> FloatTensor<Autodiff<B, C>> {
    let nodes: [_; N] = std::array::from_fn(|i| inputs[i].node.clone());
    let primitives: Vec<FloatTensor<B>> = inputs.into_iter().map(|t| t.primitive).collect();
    let node = OpBackward::<N> { op: op.clone() };
    match node.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (y, saved) = B::sparse_forward(op, primitives, ints.clone());
            prep.finish(OpState { saved, ints }, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::sparse_forward(op, primitives, ints).0),
    }
}

impl<B: SparseBackend, C: CheckpointStrategy> SparseBackend for Autodiff<B, C> {
    const KERNELS: bool = B::KERNELS;
    const MOVES_BETWEEN_DEVICES: bool = B::MOVES_BETWEEN_DEVICES;
    type Saved = Vec<FloatTensor<Self>>;

    fn sparse_forward(
        op: &SparseOp,
        inputs: Vec<FloatTensor<Self>>,
        ints: Vec<IntTensor<Self>>,
    ) -> (FloatTensor<Self>, Self::Saved) {
        if !B::KERNELS {
            // The composition is made of Burn ops: autodiff records each of them.
            let y = crate::compose::forward::<Self>(op, inputs.clone(), ints);
            return (y, inputs);
        }
        let y = match op {
            SparseOp::Monarch(_) | SparseOp::Nm(_) => tracked::<B, C, 3>(op, inputs, ints),
            SparseOp::SptAttention(_) | SparseOp::Sara | SparseOp::CbmHead(_) => {
                tracked::<B, C, 4>(op, inputs, ints)
            }
            SparseOp::RoutedFfn(_) => tracked::<B, C, 7>(op, inputs, ints),
            SparseOp::Pst(_) => tracked::<B, C, 9>(op, inputs, ints),
        };
        (y, Vec::new())
    }

    fn sparse_backward(
        op: &SparseOp,
        saved: Self::Saved,
        ints: Vec<IntTensor<Self>>,
        dy: FloatTensor<Self>,
    ) -> Vec<Option<FloatTensor<Self>>> {
        composition_backward::<Self>(op, saved, ints, dy)
    }
}
