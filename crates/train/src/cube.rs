//! [`SparseOp`]s on Burn's CubeCL backends: each op builds its IR spec from the tensors' shapes,
//! lowers it with `sparsecube-codegen` and launches the generated kernels on the tensors' own
//! buffers (made contiguous first). Intermediates a backward needs (Monarch's u, PST's score and
//! selection state) travel as 1-D tensors of the forward's saved list.

use crate::backend::SparseOp;
use crate::compose::take;
use burn::tensor::DType as BurnDType;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeRuntime, FloatElement, IntElement};
use cubecl::server::Handle;
use kernels_ir::pattern::Pattern;
use kernels_ir::{DType, KernelSpec, OpKind};
use sparsecube_codegen::cbm::{CbmForward, CbmPlan};
use sparsecube_codegen::monarch::MonarchPlan;
use sparsecube_codegen::pst::{PstFactors, PstMask, PstPlan};
use sparsecube_codegen::routed::{RoutedForward, RoutedPlan};
use sparsecube_codegen::sara::SaraPlan;
use sparsecube_codegen::spt::{SptForward, SptPlan};
use sparsecube_codegen::{LowerError, cbm, monarch, pst, routed, sara, spt};

type T<R> = CubeTensor<R>;

fn dims<R: CubeRuntime>(t: &T<R>) -> Vec<usize> {
    t.meta.shape().to_vec()
}

/// The IR dtype of the backend's float element.
fn ir_dtype<F: FloatElement>() -> DType {
    match F::dtype() {
        BurnDType::F16 => DType::F16,
        BurnDType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

/// The plan of one launch, lowered from the spec of `op` at these sizes. The modules verify the
/// same op at construction (their constructors return the IR's errors), so a spec that fails
/// here is a bug in this crate, reported with the IR's message.
fn plan<F: FloatElement, P>(
    op: OpKind,
    pattern: Pattern,
    dims: &[(&str, usize)],
    lower: impl FnOnce(&KernelSpec) -> Result<P, LowerError>,
) -> P {
    let mut b = KernelSpec::builder(op.name().replace('-', "_"), op)
        .pattern(pattern)
        .dtype(ir_dtype::<F>());
    for (name, v) in dims {
        b = b.dim(name, *v);
    }
    b.build()
        .map_err(LowerError::from)
        .and_then(|spec| lower(&spec))
        .unwrap_or_else(|e| panic!("{op}: a module built a spec the IR rejects: {e}"))
}

/// A contiguous tensor of `shape` over `handle`, in dtype `dtype`, on `like`'s device.
fn wrap<R: CubeRuntime>(like: &T<R>, handle: Handle, shape: &[usize], dtype: BurnDType) -> T<R> {
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape.to_vec()),
        handle,
        dtype,
    )
}

/// The op's float tensors, contiguous.
fn contiguous<R: CubeRuntime, const N: usize>(op: &SparseOp, v: Vec<T<R>>) -> [T<R>; N] {
    take(op, v).map(into_contiguous)
}

/// A 32-bit view of an index tensor (the kernels read u32 indices): the tensor itself when the
/// backend's int element is 32 bits wide, else a cast.
fn index32<R: CubeRuntime, I: IntElement>(index: T<R>) -> T<R> {
    let index = into_contiguous(index);
    if size_of::<I>() == 4 {
        index
    } else {
        burn_cubecl::kernel::cast(index, BurnDType::I32)
    }
}

/// What a forward keeps for its backward: the op's (contiguous) tensors and the intermediates
/// the kernels wrote.
#[derive(Clone, Debug)]
pub struct Saved<R: CubeRuntime> {
    tensors: Vec<T<R>>,
    kept: Kept,
}

#[derive(Clone, Debug)]
enum Kept {
    Spt(Box<SptForward>),
    Routed(Box<RoutedForward>),
    Monarch(Handle),
    Sara(Handle),
    Pst(PstMask),
    Cbm(CbmForward),
}

fn spt_plan<F: FloatElement>(pq: &kernels_ir::pattern::PqTopK, q: &[usize]) -> SptPlan {
    let dims = [("B", q[0]), ("H", q[1]), ("L", q[2]), ("D", q[3])];
    plan::<F, _>(
        OpKind::SptAttention,
        Pattern::PqTopK(*pq),
        &dims,
        SptPlan::from_spec,
    )
}

fn routed_plan<F: FloatElement>(
    r: &kernels_ir::pattern::Routed,
    x: &[usize],
    dff: usize,
) -> RoutedPlan {
    let dims = [("T", x[0]), ("d_model", x[1]), ("d_ff", dff)];
    plan::<F, _>(
        OpKind::RoutedFfn,
        Pattern::Routed(*r),
        &dims,
        RoutedPlan::from_spec,
    )
}

fn monarch_plan<F: FloatElement>(m: &kernels_ir::pattern::MonarchShape, n: usize) -> MonarchPlan {
    plan::<F, _>(
        OpKind::Monarch,
        Pattern::Monarch(*m),
        &[("N", n)],
        MonarchPlan::from_spec,
    )
}

fn sara_plan<F: FloatElement>(t: usize, n_in: usize, n_out: usize) -> SaraPlan {
    // The mask is the module's (chosen once from the dense weight), not this spec's rule: the
    // plan carries the sizes and the schedule of the dense products.
    let pattern = Pattern::Sara(kernels_ir::pattern::Sara::default());
    let dims = [("T", t), ("in", n_in), ("out", n_out)];
    plan::<F, _>(OpKind::SaraLinear, pattern, &dims, SaraPlan::from_spec)
}

fn pst_plan<F: FloatElement, R: CubeRuntime>(
    p: &kernels_ir::pattern::Pst,
    t: usize,
    w: &T<R>,
    u: &T<R>,
    ma: &T<R>,
) -> PstPlan {
    let mut p = *p;
    p.rank = dims(u)[1];
    p.mask_rank = dims(ma)[1];
    let dims = [("T", t), ("in", dims(w)[1]), ("out", dims(w)[0])];
    plan::<F, _>(
        OpKind::PstLinear,
        Pattern::Pst(p),
        &dims,
        PstPlan::from_spec,
    )
}

fn cbm_plan<F: FloatElement>(c: &kernels_ir::pattern::Cbm, x: &[usize], k: usize) -> CbmPlan {
    let dims = [("B", x[0]), ("C", x[1]), ("K", k)];
    plan::<F, _>(OpKind::CbmHead, Pattern::Cbm(*c), &dims, |s| {
        CbmPlan::from_spec(s, true)
    })
}

fn factors<R: CubeRuntime>([w, u, v, ma, mb, mr, mc]: [&T<R>; 7]) -> PstFactors {
    PstFactors {
        w: w.handle.clone(),
        u: u.handle.clone(),
        v: v.handle.clone(),
        ma: ma.handle.clone(),
        mb: mb.handle.clone(),
        mr: mr.handle.clone(),
        mc: mc.handle.clone(),
    }
}

/// Runs `op` forward; returns y and what [`backward`] reads.
pub(crate) fn forward<R: CubeRuntime, F: FloatElement, I: IntElement>(
    op: &SparseOp,
    inputs: Vec<T<R>>,
    ints: Vec<T<R>>,
) -> (T<R>, Saved<R>) {
    let dt = F::dtype();
    match op {
        SparseOp::SptAttention(pq) => {
            let [q, k, v, codebook] = contiguous(op, inputs);
            let shape = dims(&q);
            let plan = spt_plan::<F>(pq, &shape);
            let out = spt::forward::<R, F>(
                &q.client,
                &plan,
                &q.handle,
                &k.handle,
                &v.handle,
                &codebook.handle,
            );
            let y = wrap(&q, out.out.clone(), &shape, dt);
            (
                y,
                Saved {
                    tensors: vec![q, k, v],
                    kept: Kept::Spt(Box::new(out)),
                },
            )
        }
        SparseOp::RoutedFfn(r) => {
            let [x, w1, b1, w2, b2, wr, br] = contiguous(op, inputs);
            let shape = dims(&x);
            let plan = routed_plan::<F>(r, &shape, dims(&w1)[0]);
            let h = |t: &T<R>| t.handle.clone();
            let out = routed::forward::<R, F>(
                &x.client,
                &plan,
                &h(&x),
                &h(&w1),
                &h(&b1),
                &h(&w2),
                &h(&b2),
                &h(&wr),
                &h(&br),
            );
            let y = wrap(&x, out.y.clone(), &shape, dt);
            (
                y,
                Saved {
                    tensors: vec![x, w1, w2, wr],
                    kept: Kept::Routed(Box::new(out)),
                },
            )
        }
        SparseOp::Monarch(m) => {
            let [x, w1, w2] = contiguous(op, inputs);
            let n = dims(&x)[0];
            let plan = monarch_plan::<F>(m, n);
            let out =
                monarch::forward::<R, F>(&x.client, &plan, &x.handle, &w1.handle, &w2.handle, true);
            let y = wrap(&x, out.y, &[n, plan.sizes().3], dt);
            (
                y,
                Saved {
                    tensors: vec![x, w1, w2],
                    kept: Kept::Monarch(out.u),
                },
            )
        }
        SparseOp::Sara => {
            let [x, w, v, bias] = contiguous(op, inputs);
            let [index] = take(op, ints);
            let index = index32::<R, I>(index);
            let ([t, n_in], n_out, nnz) = ([dims(&x)[0], dims(&x)[1]], dims(&w)[0], dims(&v)[0]);
            let plan = sara_plan::<F>(t, n_in, n_out);
            let client = &x.client;
            // W_eff in a buffer of its own: the frozen weight stays as the module holds it.
            let w_eff = client.empty(n_out * n_in * size_of::<F>());
            sara::copy::<R, F>(client, &w.handle, &w_eff, n_out * n_in);
            sara::scatter::<R, F>(client, &w_eff, &index.handle, &v.handle, nnz, n_out * n_in);
            let y = sara::forward::<R, F>(client, &plan, &x.handle, &w_eff, &bias.handle);
            let y = wrap(&x, y, &[t, n_out], dt);
            (
                y,
                Saved {
                    tensors: vec![x, v, index],
                    kept: Kept::Sara(w_eff),
                },
            )
        }
        SparseOp::Pst(p) => {
            let [x, w, bias, u, v, ma, mb, mr, mc] = contiguous(op, inputs);
            let plan = pst_plan::<F, R>(p, dims(&x)[0], &w, &u, &ma);
            let f = factors([&w, &u, &v, &ma, &mb, &mr, &mc]);
            let mask = pst::select_mask::<R, F>(&x.client, &plan, &f);
            let y = pst::forward::<R, F>(&x.client, &plan, &x.handle, &f, &mask, &bias.handle);
            let y = wrap(&x, y, &[plan.t, plan.cfg.n_out as usize], dt);
            (
                y,
                Saved {
                    tensors: vec![x, w, u, v, ma, mb, mr, mc],
                    kept: Kept::Pst(mask),
                },
            )
        }
        SparseOp::CbmHead(c) => {
            let [x, wc, wh, noise] = contiguous(op, inputs);
            let shape = dims(&x);
            let k = dims(&wh)[0];
            let plan = cbm_plan::<F>(c, &shape, k);
            let out = cbm::forward::<R, F>(
                &x.client,
                &plan,
                &x.handle,
                &wc.handle,
                &wh.handle,
                &noise.handle,
            );
            let y = wrap(&x, out.logits.clone(), &[shape[0], k], dt);
            (
                y,
                Saved {
                    tensors: vec![x, wc, wh],
                    kept: Kept::Cbm(out),
                },
            )
        }
    }
}

/// The gradients of every float input of `op` (None for the inputs it does not differentiate),
/// from [`forward`]'s saved tensors and the upstream gradient `dy`.
pub(crate) fn backward<R: CubeRuntime, F: FloatElement>(
    op: &SparseOp,
    saved: Saved<R>,
    dy: T<R>,
) -> Vec<Option<T<R>>> {
    let dt = F::dtype();
    let dy = into_contiguous(dy);
    let like = |t: &T<R>, h: Handle| Some(wrap(t, h, &dims(t), dt));
    match (op, saved.kept) {
        (SparseOp::SptAttention(pq), Kept::Spt(out)) => {
            let [q, k, v] = take(op, saved.tensors);
            let plan = spt_plan::<F>(pq, &dims(&q));
            let g = spt::backward::<R, F>(
                &q.client, &plan, &q.handle, &k.handle, &v.handle, &out, &dy.handle,
            );
            vec![like(&q, g.dq), like(&k, g.dk), like(&v, g.dv), None]
        }
        (SparseOp::RoutedFfn(r), Kept::Routed(out)) => {
            let [x, w1, w2, wr] = take(op, saved.tensors);
            let plan = routed_plan::<F>(r, &dims(&x), dims(&w1)[0]);
            let g = routed::backward::<R, F>(
                &x.client, &plan, &x.handle, &w1.handle, &w2.handle, &wr.handle, &out, &dy.handle,
            );
            let vector = |h: Handle, n: usize| Some(wrap(&x, h, &[n], dt));
            vec![
                like(&x, g.dx),
                like(&w1, g.dw1),
                vector(g.db1, dims(&w1)[0]),
                like(&w2, g.dw2),
                vector(g.db2, dims(&w2)[0]),
                like(&wr, g.dwr),
                vector(g.dbr, dims(&wr)[0]),
            ]
        }
        (SparseOp::Monarch(m), Kept::Monarch(u)) => {
            let [x, w1, w2] = take(op, saved.tensors);
            let plan = monarch_plan::<F>(m, dims(&x)[0]);
            let g = monarch::backward::<R, F>(
                &x.client, &plan, &x.handle, &w1.handle, &w2.handle, &u, &dy.handle,
            );
            vec![like(&x, g.dx), like(&w1, g.dw1), like(&w2, g.dw2)]
        }
        (SparseOp::Sara, Kept::Sara(w_eff)) => {
            let [x, v, index] = take(op, saved.tensors);
            let ([t, n_in], n_out, nnz) = ([dims(&x)[0], dims(&x)[1]], dims(&dy)[1], dims(&v)[0]);
            let plan = sara_plan::<F>(t, n_in, n_out);
            let g = sara::backward::<R, F>(
                &x.client,
                &plan,
                &x.handle,
                &w_eff,
                &index.handle,
                nnz,
                &dy.handle,
            );
            vec![
                like(&x, g.dx),
                None,
                like(&v, g.dv),
                Some(wrap(&x, g.dbias, &[n_out], dt)),
            ]
        }
        (SparseOp::Pst(p), Kept::Pst(mask)) => {
            let [x, w, u, v, ma, mb, mr, mc] = take(op, saved.tensors);
            let plan = pst_plan::<F, R>(p, dims(&x)[0], &w, &u, &ma);
            let f = factors([&w, &u, &v, &ma, &mb, &mr, &mc]);
            let g = pst::backward::<R, F>(&x.client, &plan, &x.handle, &f, &mask, &dy.handle);
            vec![
                like(&x, g.dx),
                None,
                Some(wrap(&x, g.dbias, &[dims(&w)[0]], dt)),
                like(&u, g.du),
                like(&v, g.dv),
                like(&ma, g.dma),
                like(&mb, g.dmb),
                like(&mr, g.dmr),
                like(&mc, g.dmc),
            ]
        }
        (SparseOp::CbmHead(c), Kept::Cbm(out)) => {
            let [x, wc, wh] = take(op, saved.tensors);
            let plan = cbm_plan::<F>(c, &dims(&x), dims(&wh)[0]);
            let g = cbm::backward::<R, F>(
                &x.client, &plan, &x.handle, &wc.handle, &wh.handle, &out, &dy.handle,
            );
            vec![like(&x, g.dx), like(&wc, g.dwc), like(&wh, g.dwh), None]
        }
        (op, kept) => panic!("{}: the saved state of another op ({kept:?})", op.name()),
    }
}
