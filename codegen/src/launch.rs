//! Launch helpers shared by every kernel family: array arguments over raw handles and the grid of
//! one-unit-per-element kernels.

use cubecl::prelude::*;
use cubecl::server::Handle;

/// Units per cube of the one-unit-per-element (or per-row) kernels.
pub(crate) const UNITS: u32 = 64;

/// An array argument over `len` scalars of `h`.
#[allow(unsafe_code)]
pub(crate) fn arr<R: Runtime>(h: &Handle, len: usize) -> ArrayArg<R> {
    // SAFETY: every handle passed here was allocated by a launcher of this crate (or by its caller
    // for the documented shape) with at least `len` elements of the kernel's element type.
    unsafe { ArrayArg::from_raw_parts(h.clone(), len) }
}

/// Cubes of [`UNITS`] units covering `n` units (at least one).
pub(crate) fn grid<R: Runtime>(client: &ComputeClient<R>, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(UNITS);
    (
        cubecl::calculate_cube_count_elemwise(client, n.max(1), dim),
        dim,
    )
}

/// The grid of a grouped tiled product ([`crate::tile`]): x = row-tile slots covering `rows` rows
/// in `groups` groups, y = column tiles of `n` columns.
pub(crate) fn grouped_tiles(rows: usize, groups: usize, n: usize) -> (CubeCount, CubeDim) {
    use crate::tile::{column_tiles, cube_dim, group_tile_slots};
    (
        CubeCount::Static(
            group_tile_slots(rows, groups) as u32,
            column_tiles(n) as u32,
            1,
        ),
        cube_dim(),
    )
}
