//! [`PlanBuilder`]: how a lowering writes a plan — declare buffers (each length computed here,
//! once, from the spec's sizes), then append launches in order.

use super::{
    Arg, BufId, Buffer, ConstData, Cubes, Elem, Float, Kernel, Launch, LaunchPlan, Pass, Role, Step,
};
use crate::tile::TileProgram;
use kernels_ir::{DType, Extent, OpKind};

/// Units per cube of the one-unit-per-element (or per-row) kernels.
pub const UNITS: u32 = 64;

/// Builds one [`LaunchPlan`].
#[derive(Debug)]
pub struct PlanBuilder {
    plan: LaunchPlan,
}

fn fixed(shape: &[usize]) -> Vec<Extent> {
    shape.iter().map(|&n| Extent::Fixed(n)).collect()
}

impl PlanBuilder {
    /// An empty plan of `op`'s `pass` in storage dtype `dtype`.
    pub fn new(op: OpKind, pass: Pass, dtype: DType) -> Self {
        Self::named(op, &format!("{op} {}", pass.name()), pass, dtype)
    }

    /// An empty plan called `label` (an auxiliary plan of `op`, e.g. its optimizer step).
    pub fn named(op: OpKind, label: &str, pass: Pass, dtype: DType) -> Self {
        Self {
            plan: LaunchPlan {
                label: label.into(),
                op,
                pass,
                dtype,
                buffers: Vec::new(),
                steps: Vec::new(),
                nnz_bound: 0,
            },
        }
    }

    /// The pass being built.
    pub fn pass(&self) -> Pass {
        self.plan.pass
    }

    /// The element type of buffer `b`.
    pub fn elem(&self, b: BufId) -> Elem {
        self.plan.buffers[b].elem
    }

    /// Declares a buffer.
    pub fn buffer(&mut self, name: &str, elem: Elem, shape: Vec<Extent>, role: Role) -> BufId {
        debug_assert!(
            self.plan.buffer(name).is_none(),
            "{}: buffer `{name}` declared twice",
            self.plan.op
        );
        self.plan.buffers.push(Buffer {
            name: name.into(),
            elem,
            shape,
            role,
            init: None,
        });
        self.plan.buffers.len() - 1
    }

    /// A buffer of fixed `shape` with `role`.
    pub fn declare(&mut self, name: &str, elem: Elem, shape: &[usize], role: Role) -> BufId {
        self.buffer(name, elem, fixed(shape), role)
    }

    /// An input of the op.
    pub fn input(&mut self, name: &str, elem: Elem, shape: &[usize]) -> BufId {
        self.buffer(name, elem, fixed(shape), Role::Input)
    }

    /// An output of the op.
    pub fn output(&mut self, name: &str, elem: Elem, shape: &[usize]) -> BufId {
        self.buffer(name, elem, fixed(shape), Role::Output)
    }

    /// A buffer kept between the passes.
    pub fn saved(&mut self, name: &str, elem: Elem, shape: &[usize]) -> BufId {
        self.buffer(name, elem, fixed(shape), Role::Saved)
    }

    /// Scratch, alive from its first use to its last.
    pub fn scratch(&mut self, name: &str, elem: Elem, shape: &[usize]) -> BufId {
        self.buffer(name, elem, fixed(shape), Role::Scratch)
    }

    /// A u32 constant uploaded by the executor.
    pub fn const_u32(&mut self, name: &str, data: Vec<u32>) -> BufId {
        let n = data.len();
        let b = self.buffer(name, Elem::U32, fixed(&[n]), Role::Const);
        self.initialise(b, ConstData::U32(data));
        b
    }

    /// An f32 constant uploaded by the executor.
    pub fn const_f32(&mut self, name: &str, data: Vec<f32>) -> BufId {
        let n = data.len();
        let b = self.buffer(name, Elem::F32, fixed(&[n]), Role::Const);
        self.initialise(b, ConstData::F32(data));
        b
    }

    /// Zeros of `elem` (an absent optional input, or a placeholder binding no launch reads).
    pub fn zeros(&mut self, name: &str, elem: Elem, shape: &[usize]) -> BufId {
        let b = self.buffer(name, elem, fixed(shape), Role::Const);
        self.initialise(b, ConstData::Zeros);
        b
    }

    /// Gives buffer `b` initial contents (uploaded instead of allocated empty).
    pub fn initialise(&mut self, b: BufId, data: ConstData) {
        self.plan.buffers[b].init = Some(data);
    }

    /// The buffer named `name`, if declared.
    pub fn find(&self, name: &str) -> Option<BufId> {
        self.plan.buffer(name)
    }

    /// The buffer named `name` (declared earlier).
    pub fn id(&self, name: &str) -> BufId {
        match self.plan.buffer(name) {
            Some(b) => b,
            // Unreachable from input: buffer names are constants of each lowering, declared before
            // use (every op is lowered by the plan tests).
            None => panic!("{}: no buffer `{name}` in the plan", self.plan.op),
        }
    }

    /// Appends a launch whose float generic is the storage dtype.
    pub fn append(
        &mut self,
        name: &str,
        kernel: Kernel,
        cubes: Cubes,
        dim: (u32, u32, u32),
        args: Vec<Arg>,
    ) {
        self.append_as(name, kernel, Float::Storage, cubes, dim, args);
    }

    /// Appends a launch with an explicit float type.
    pub fn append_as(
        &mut self,
        name: &str,
        kernel: Kernel,
        float: Float,
        cubes: Cubes,
        dim: (u32, u32, u32),
        args: Vec<Arg>,
    ) {
        self.plan.steps.push(Step::Launch(Launch {
            name: name.into(),
            kernel,
            float,
            cubes,
            dim,
            args,
        }));
    }

    /// Appends a one-unit-per-element launch over `units` units ([`UNITS`] per cube).
    pub fn elementwise(&mut self, name: &str, kernel: Kernel, units: usize, args: Vec<Arg>) {
        self.append(name, kernel, Cubes::units(units), (UNITS, 1, 1), args);
    }

    /// [`Self::elementwise`] with an explicit float type.
    pub fn elementwise_as(
        &mut self,
        name: &str,
        kernel: Kernel,
        float: Float,
        units: usize,
        args: Vec<Arg>,
    ) {
        self.append_as(
            name,
            kernel,
            float,
            Cubes::units(units),
            (UNITS, 1, 1),
            args,
        );
    }

    /// Appends a one-unit-per-element launch over `units` units, which may be the plan's
    /// read-back count.
    pub fn units(
        &mut self,
        name: &str,
        kernel: Kernel,
        float: Float,
        units: Extent,
        args: Vec<Arg>,
    ) {
        self.append_as(
            name,
            kernel,
            float,
            Cubes::Units(units, 1),
            (UNITS, 1, 1),
            args,
        );
    }

    /// Appends one tiled product: program `prog` over the buffer lists (storage inputs, f32
    /// inputs, u32 inputs, storage outputs, f32 outputs), with runtime rows `m` and reduction
    /// length `k`, on `cubes`.
    #[allow(clippy::too_many_arguments)]
    pub fn tile(
        &mut self,
        name: &str,
        prog: TileProgram,
        lists: [&[BufId]; 5],
        m: usize,
        k: usize,
        cubes: (u32, u32, u32),
    ) {
        let [ins, ins32, idx, outs, outs32] = lists;
        let args = vec![
            Arg::Bufs(ins.to_vec()),
            Arg::Bufs(ins32.to_vec()),
            Arg::Bufs(idx.to_vec()),
            Arg::Bufs(outs.to_vec()),
            Arg::Bufs(outs32.to_vec()),
            Arg::Scalars(prog.runtime_sizes(m, k)),
        ];
        let (x, y, z) = cubes;
        self.append(
            name,
            Kernel::Tile(prog.structure()),
            Cubes::Fixed(x, y, z),
            TileProgram::cube_dim(),
            args,
        );
    }

    /// Appends the read-back of word `word` of `buf` as the plan's nnz, at most `bound`.
    pub fn read_nnz(&mut self, buf: BufId, word: usize, bound: usize) {
        self.plan.nnz_bound = bound;
        self.plan.steps.push(Step::ReadNnz { buf, word });
    }

    /// Sets the bound of a count the plan does not read itself.
    pub fn nnz_bound(&mut self, bound: usize) {
        self.plan.nnz_bound = bound;
    }

    /// The finished plan.
    pub fn finish(self) -> LaunchPlan {
        self.plan
    }
}

/// A buffer argument.
pub fn buf(b: BufId) -> Arg {
    Arg::Buf(b)
}
