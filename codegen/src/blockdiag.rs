//! One block-diagonal linear map (`block-diag-linear`): y [N, out] with
//! `y[:, b·qo + o] = Σ_j w[b, o, j] · x[:, b·pi + j]` for blocks b, w [blocks, qo, pi]. Each
//! block is its own GEMM on the shared tile mainloop ([`crate::tile`]), cube z = block: the
//! block's slice of x is addressed through the reduction range and the weight base, never
//! copied. Backward: dx (per block dy_b · w_b) and dw (per block dy_bᵀ · x_b, over the rows in
//! order).

pub mod kernels {
    //! `#[cube]` kernels of the block-diagonal map. `none_u32` / `none_f32` fill the tile
    //! mainloop's index and scale slots, which these products never read.

    // `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
    #![allow(missing_docs)]

    use crate::tile::{TILE, TileShape, store_tile, tile_product};
    use cubecl::prelude::*;

    /// Comptime sizes of a block-diagonal map.
    #[derive_cube_comptime]
    pub struct BlockDiagConfig {
        /// Blocks.
        pub blocks: u32,
        /// Input features per block.
        pub pi: u32,
        /// Output features per block.
        pub qo: u32,
        /// Reduction steps per staged slice of the tile mainloop (the schedule's `tile_k`).
        pub tk: u32,
    }

    /// y tile (rows of cube x, the block's output columns of cube y) of block cube z.
    #[cube(launch)]
    pub fn block_diag_fwd<F: Float>(
        x: &Array<F>,
        w: &Array<F>,
        none_u32: &Array<u32>,
        none_f32: &Array<f32>,
        y: &mut Array<F>,
        #[comptime] cfg: BlockDiagConfig,
    ) {
        let (pi, qo) = (cfg.pi as usize, cfg.qo as usize);
        let n = x.len() / (cfg.blocks as usize * pi);
        let b = CUBE_POS_Z as usize;
        let r0 = (CUBE_POS_X * TILE) as usize;
        let n0 = (CUBE_POS_Y * TILE) as usize;
        // A[r, k] = x[r, k] with k over the block's inputs b·pi..(b+1)·pi;
        // B[k, o] = w[b, o, k − b·pi] = w[b·qo·pi − b·pi + k + o·pi].
        let shape = comptime!(TileShape {
            n: cfg.qo,
            lda: cfg.blocks * cfg.pi,
            a_kmajor: false,
            gather_a: false,
            sk: 1,
            sn: cfg.pi,
            gather_b: false,
            scale_b: false,
            tk: cfg.tk,
        });
        let acc = tile_product::<F, F>(
            x,
            w,
            none_u32,
            none_f32,
            r0,
            n,
            n0,
            b * qo * pi - b * pi,
            b * pi,
            (b + 1) * pi,
            shape,
        );
        store_tile::<F>(y, &acc, r0, n, n0, b * qo, cfg.qo, cfg.blocks * cfg.qo);
    }

    /// dx tile of block cube z: dx[:, b·pi + j] = Σ_o dy[:, b·qo + o] · w[b, o, j].
    #[cube(launch)]
    pub fn block_diag_bwd_dx<F: Float>(
        dy: &Array<F>,
        w: &Array<F>,
        none_u32: &Array<u32>,
        none_f32: &Array<f32>,
        dx: &mut Array<F>,
        #[comptime] cfg: BlockDiagConfig,
    ) {
        let (pi, qo) = (cfg.pi as usize, cfg.qo as usize);
        let n = dx.len() / (cfg.blocks as usize * pi);
        let b = CUBE_POS_Z as usize;
        let r0 = (CUBE_POS_X * TILE) as usize;
        let n0 = (CUBE_POS_Y * TILE) as usize;
        // A[r, k] = dy[r, k] with k over b·qo..(b+1)·qo; B[k, j] = w[b, k − b·qo, j] = w[k·pi + j].
        let shape = comptime!(TileShape {
            n: cfg.pi,
            lda: cfg.blocks * cfg.qo,
            a_kmajor: false,
            gather_a: false,
            sk: cfg.pi,
            sn: 1,
            gather_b: false,
            scale_b: false,
            tk: cfg.tk,
        });
        let acc = tile_product::<F, F>(
            dy,
            w,
            none_u32,
            none_f32,
            r0,
            n,
            n0,
            0,
            b * qo,
            (b + 1) * qo,
            shape,
        );
        store_tile::<F>(dx, &acc, r0, n, n0, b * pi, cfg.pi, cfg.blocks * cfg.pi);
    }

    /// dw tile of block cube z: dw[b, o, j] = Σ_rows dy[row, b·qo + o] · x[row, b·pi + j], the
    /// rows in order.
    #[cube(launch)]
    pub fn block_diag_bwd_dw<F: Float>(
        dy: &Array<F>,
        x: &Array<F>,
        none_u32: &Array<u32>,
        none_f32: &Array<f32>,
        dw: &mut Array<F>,
        #[comptime] cfg: BlockDiagConfig,
    ) {
        let (pi, qo) = (cfg.pi as usize, cfg.qo as usize);
        let n = x.len() / (cfg.blocks as usize * pi);
        let b = CUBE_POS_Z as usize;
        // Rows of this tile are the block's outputs b·qo + o: row-major dw [blocks·qo, pi].
        let r0 = b * qo + (CUBE_POS_X * TILE) as usize;
        let n0 = (CUBE_POS_Y * TILE) as usize;
        // A[r, k] = dy[k, r] (reduction-major: k is the row of dy); B[k, j] = x[k, b·pi + j].
        let shape = comptime!(TileShape {
            n: cfg.pi,
            lda: cfg.blocks * cfg.qo,
            a_kmajor: true,
            gather_a: false,
            sk: cfg.blocks * cfg.pi,
            sn: 1,
            gather_b: false,
            scale_b: false,
            tk: cfg.tk,
        });
        let acc = tile_product::<F, F>(
            dy,
            x,
            none_u32,
            none_f32,
            r0,
            (b + 1) * qo,
            n0,
            b * pi,
            0,
            n,
            shape,
        );
        store_tile::<F>(dw, &acc, r0, (b + 1) * qo, n0, 0, cfg.pi, cfg.pi);
    }
}

use crate::LowerError;
use crate::launch::arr;
use crate::tile::{column_tiles, cube_dim};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::{BlockDiagConfig, block_diag_bwd_dw, block_diag_bwd_dx, block_diag_fwd};
use kernels_ir::pattern::Pattern;
use kernels_ir::{KernelSpec, OpKind};

/// Sizes and the comptime config of one `block-diag-linear` spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockDiagPlan {
    /// Comptime config of every kernel.
    pub cfg: BlockDiagConfig,
    /// Rows of x.
    pub n: usize,
}

impl BlockDiagPlan {
    /// Lowers a verified `block-diag-linear` spec.
    pub fn from_spec(spec: &KernelSpec) -> Result<Self, LowerError> {
        spec.verify()?;
        let (Pattern::BlockDiagonal(p), OpKind::BlockDiagLinear) = (spec.pattern, spec.op) else {
            return Err(LowerError::Unsupported {
                op: spec.op,
                what: "this lowering (it is block-diag-linear's)".into(),
            });
        };
        Ok(Self {
            cfg: BlockDiagConfig {
                blocks: p.blocks as u32,
                pi: (spec.dim("in") / p.blocks) as u32,
                qo: (spec.dim("out") / p.blocks) as u32,
                tk: spec.schedule.tile_k,
            },
            n: spec.dim("N"),
        })
    }

    /// (N, in, out).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let c = self.cfg;
        (
            self.n,
            (c.blocks * c.pi) as usize,
            (c.blocks * c.qo) as usize,
        )
    }

    fn weights(&self) -> usize {
        let c = self.cfg;
        (c.blocks * c.qo * c.pi) as usize
    }
}

fn grid(rows: usize, cols: usize, blocks: u32) -> CubeCount {
    CubeCount::Static(column_tiles(rows) as u32, column_tiles(cols) as u32, blocks)
}

/// y = the block-diagonal map of x, in dtype `F`.
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &BlockDiagPlan,
    x: &Handle,
    w: &Handle,
) -> Handle {
    let (n, n_in, n_out) = plan.sizes();
    let none = client.empty(4);
    let y = client.empty(n * n_out * size_of::<F>());
    block_diag_fwd::launch::<F, R>(
        client,
        grid(n, plan.cfg.qo as usize, plan.cfg.blocks),
        cube_dim(),
        arr(x, n * n_in),
        arr(w, plan.weights()),
        arr(&none, 1),
        arr(&none, 1),
        arr(&y, n * n_out),
        plan.cfg,
    );
    y
}

/// (dx, dw) for upstream gradient `dy`.
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &BlockDiagPlan,
    x: &Handle,
    w: &Handle,
    dy: &Handle,
) -> (Handle, Handle) {
    let (n, n_in, n_out) = plan.sizes();
    let c = plan.cfg;
    let none = client.empty(4);
    let dx = client.empty(n * n_in * size_of::<F>());
    block_diag_bwd_dx::launch::<F, R>(
        client,
        grid(n, c.pi as usize, c.blocks),
        cube_dim(),
        arr(dy, n * n_out),
        arr(w, plan.weights()),
        arr(&none, 1),
        arr(&none, 1),
        arr(&dx, n * n_in),
        c,
    );
    let dw = client.empty(plan.weights() * size_of::<F>());
    block_diag_bwd_dw::launch::<F, R>(
        client,
        grid(c.qo as usize, c.pi as usize, c.blocks),
        cube_dim(),
        arr(dy, n * n_out),
        arr(x, n * n_in),
        arr(&none, 1),
        arr(&none, 1),
        arr(&dw, plan.weights()),
        c,
    );
    (dx, dw)
}
