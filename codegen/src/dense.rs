//! A dense linear layer, y = x·Wᵀ + b (`dense-linear`), and its backward on the shared tile mainloop
//! ([`crate::tile`]): the baseline the structured and sparse linears are benchmarked against on
//! the same device, in the same kernel style.

pub mod kernels {
    //! `#[cube]` kernels of the dense linear. `none_u32` / `none_f32` fill the tile mainloop's
    //! index and scale slots, which these products never read (any one-element buffer).

    // `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
    #![allow(missing_docs)]

    use crate::tile::{MICRO, TILE, TILE_UNITS, TileShape, store_tile, tile_product};
    use cubecl::prelude::*;

    /// Comptime sizes of a dense linear.
    #[derive_cube_comptime]
    pub struct LinearConfig {
        /// Input features.
        pub n_in: u32,
        /// Output features.
        pub n_out: u32,
        /// Reduction steps per staged slice of the tile mainloop (the schedule's `tile_k`).
        pub tk: u32,
    }

    /// y [N, n_out] = x [N, n_in]·wᵀ + bias (w [n_out, n_in]), one 64×64 tile of y per cube.
    #[cube(launch)]
    pub fn linear_fwd<F: Float>(
        x: &Array<F>,
        w: &Array<F>,
        bias: &Array<F>,
        none_u32: &Array<u32>,
        none_f32: &Array<f32>,
        y: &mut Array<F>,
        #[comptime] cfg: LinearConfig,
    ) {
        let n = y.len() / (cfg.n_out as usize);
        let r0 = (CUBE_POS_X * TILE) as usize;
        let n0 = (CUBE_POS_Y * TILE) as usize;
        let shape = comptime!(TileShape {
            n: cfg.n_out,
            lda: cfg.n_in,
            a_kmajor: false,
            gather_a: false,
            sk: 1,
            sn: cfg.n_in,
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
            0,
            0,
            cfg.n_in as usize,
            shape,
        );
        let mut out = Array::<f32>::new(comptime!((MICRO * MICRO) as usize));
        #[unroll]
        for j in 0..MICRO {
            let col = n0 + (UNIT_POS_X + j * TILE_UNITS) as usize;
            let mut b = 0.0f32;
            if col < cfg.n_out as usize {
                b = f32::cast_from(bias[col]);
            }
            #[unroll]
            for i in 0..MICRO {
                out[(i * MICRO + j) as usize] = acc[(i * MICRO + j) as usize] + b;
            }
        }
        store_tile::<F>(y, &out, r0, n, n0, 0, cfg.n_out, cfg.n_out);
    }

    /// dbias [n_out] = Σ_rows dy, one unit per output, over the rows in order.
    #[cube(launch)]
    pub fn linear_bwd_dbias<F: Float>(
        dy: &Array<F>,
        dbias: &mut Array<F>,
        #[comptime] cfg: LinearConfig,
    ) {
        let o = ABSOLUTE_POS;
        let n_out = cfg.n_out as usize;
        if o < n_out {
            let mut acc = 0.0f32;
            for b in 0..dy.len() / n_out {
                acc += f32::cast_from(dy[b * n_out + o]);
            }
            dbias[o] = F::cast_from(acc);
        }
    }

    /// dx [N, n_in] = dy [N, n_out]·w, one tile of dx per cube.
    #[cube(launch)]
    pub fn linear_bwd_dx<F: Float>(
        dy: &Array<F>,
        w: &Array<F>,
        none_u32: &Array<u32>,
        none_f32: &Array<f32>,
        dx: &mut Array<F>,
        #[comptime] cfg: LinearConfig,
    ) {
        let n = dx.len() / (cfg.n_in as usize);
        let r0 = (CUBE_POS_X * TILE) as usize;
        let n0 = (CUBE_POS_Y * TILE) as usize;
        let shape = comptime!(TileShape {
            n: cfg.n_in,
            lda: cfg.n_out,
            a_kmajor: false,
            gather_a: false,
            sk: cfg.n_in,
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
            0,
            cfg.n_out as usize,
            shape,
        );
        store_tile::<F>(dx, &acc, r0, n, n0, 0, cfg.n_in, cfg.n_in);
    }

    /// dw [n_out, n_in] = dyᵀ·x, reduced over the N rows in order, one tile of dw per cube.
    #[cube(launch)]
    pub fn linear_bwd_dw<F: Float>(
        dy: &Array<F>,
        x: &Array<F>,
        none_u32: &Array<u32>,
        none_f32: &Array<f32>,
        dw: &mut Array<F>,
        #[comptime] cfg: LinearConfig,
    ) {
        let n = x.len() / (cfg.n_in as usize);
        let r0 = (CUBE_POS_X * TILE) as usize;
        let n0 = (CUBE_POS_Y * TILE) as usize;
        let shape = comptime!(TileShape {
            n: cfg.n_in,
            lda: cfg.n_out,
            a_kmajor: true,
            gather_a: false,
            sk: cfg.n_in,
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
            cfg.n_out as usize,
            n0,
            0,
            0,
            n,
            shape,
        );
        store_tile::<F>(dw, &acc, r0, cfg.n_out as usize, n0, 0, cfg.n_in, cfg.n_in);
    }
}

use crate::launch::{arr, grid};
use crate::tile::{column_tiles, cube_dim};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::{LinearConfig, linear_bwd_dbias, linear_bwd_dw, linear_bwd_dx, linear_fwd};

/// A dense linear of `n` rows, `n_in` → `n_out` features.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearPlan {
    /// Comptime sizes.
    pub cfg: LinearConfig,
    /// Rows.
    pub n: usize,
}

impl LinearPlan {
    /// The plan of x [n, n_in]·wᵀ with w [n_out, n_in], staging `tile_k` reduction steps per
    /// slice (one of [`kernels_ir::Knob::TILE_K`], the schedule's `tile_k`).
    pub fn new(n: usize, n_in: usize, n_out: usize, tile_k: u32) -> Self {
        Self {
            cfg: LinearConfig {
                n_in: n_in as u32,
                n_out: n_out as u32,
                tk: tile_k,
            },
            n,
        }
    }

    /// The plan of a verified `dense-linear` spec (sizes `T`, `in`, `out`; the schedule's
    /// `tile_k`).
    pub fn from_spec(spec: &kernels_ir::KernelSpec) -> Self {
        Self::new(
            spec.dim("T"),
            spec.dim("in"),
            spec.dim("out"),
            spec.schedule.tile_k,
        )
    }
}

fn tiles(rows: usize, cols: usize) -> CubeCount {
    CubeCount::Static(column_tiles(rows) as u32, column_tiles(cols) as u32, 1)
}

/// y = x·wᵀ + bias, in dtype `F`.
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &LinearPlan,
    x: &Handle,
    w: &Handle,
    bias: &Handle,
) -> Handle {
    let (n, n_in, n_out) = (plan.n, plan.cfg.n_in as usize, plan.cfg.n_out as usize);
    let none = client.empty(4);
    let y = client.empty(n * n_out * size_of::<F>());
    linear_fwd::launch::<F, R>(
        client,
        tiles(n, n_out),
        cube_dim(),
        arr(x, n * n_in),
        arr(w, n_out * n_in),
        arr(bias, n_out),
        arr(&none, 1),
        arr(&none, 1),
        arr(&y, n * n_out),
        plan.cfg,
    );
    y
}

/// (dx, dw, dbias) for upstream gradient `dy`.
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &LinearPlan,
    x: &Handle,
    w: &Handle,
    dy: &Handle,
) -> (Handle, Handle, Handle) {
    (
        backward_dx::<R, F>(client, plan, w, dy),
        backward_dw::<R, F>(client, plan, x, dy),
        backward_dbias::<R, F>(client, plan, dy),
    )
}

/// dx = dy·w.
pub fn backward_dx<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &LinearPlan,
    w: &Handle,
    dy: &Handle,
) -> Handle {
    let (n, n_in, n_out) = (plan.n, plan.cfg.n_in as usize, plan.cfg.n_out as usize);
    let none = client.empty(4);
    let dx = client.empty(n * n_in * size_of::<F>());
    linear_bwd_dx::launch::<F, R>(
        client,
        tiles(n, n_in),
        cube_dim(),
        arr(dy, n * n_out),
        arr(w, n_out * n_in),
        arr(&none, 1),
        arr(&none, 1),
        arr(&dx, n * n_in),
        plan.cfg,
    );
    dx
}

/// dw = dyᵀ·x, [n_out, n_in].
pub fn backward_dw<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &LinearPlan,
    x: &Handle,
    dy: &Handle,
) -> Handle {
    let (n, n_in, n_out) = (plan.n, plan.cfg.n_in as usize, plan.cfg.n_out as usize);
    let none = client.empty(4);
    let dw = client.empty(n_out * n_in * size_of::<F>());
    linear_bwd_dw::launch::<F, R>(
        client,
        tiles(n_out, n_in),
        cube_dim(),
        arr(dy, n * n_out),
        arr(x, n * n_in),
        arr(&none, 1),
        arr(&none, 1),
        arr(&dw, n_out * n_in),
        plan.cfg,
    );
    dw
}

/// dbias = the column sums of dy.
pub fn backward_dbias<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    plan: &LinearPlan,
    dy: &Handle,
) -> Handle {
    let (n, n_out) = (plan.n, plan.cfg.n_out as usize);
    let dbias = client.empty(n_out * size_of::<F>());
    let (count, dim) = grid(client, n_out);
    linear_bwd_dbias::launch::<F, R>(
        client,
        count,
        dim,
        arr(dy, n * n_out),
        arr(&dbias, n_out),
        plan.cfg,
    );
    dbias
}
