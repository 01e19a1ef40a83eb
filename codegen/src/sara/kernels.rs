//! `#[cube]` kernels of SaRA (METHODS.md §4) besides the products (on the tile program) and the
//! packing (`crate::elementwise`): AdamW over the packed values and the optimizer state carried
//! over a re-mask. Both are O(nnz): no dense [out, in] float buffer is touched.

// `#[cube(launch, launch_unchecked)]` generates undocumented modules and launch functions.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// One AdamW step over the packed values (PyTorch's formulation, decoupled weight decay), in
/// place; moments `m`, `s` are f32 with the length of `v` (state size = nnz). `hyper` =
/// [lr, β1, 1 − β1, β2, 1 − β2, ε, weight decay, 1 − β1^step, 1 − β2^step], the differences
/// rounded from f64 (1 − f32(0.999) is 1.3e-5 off 0.001).
#[cube(launch, launch_unchecked)]
pub fn sara_adamw<F: Float>(
    v: &mut Array<F>,
    dv: &Array<F>,
    m: &mut Array<f32>,
    s: &mut Array<f32>,
    hyper: &Array<f32>,
) {
    let j = ABSOLUTE_POS;
    if j < v.len() {
        let lr = hyper[0];
        let (b1, one_b1, b2, one_b2) = (hyper[1], hyper[2], hyper[3], hyper[4]);
        let (eps, wd, c1, c2) = (hyper[5], hyper[6], hyper[7], hyper[8]);
        let g = f32::cast_from(dv[j]);
        let mut value = f32::cast_from(v[j]) * (1.0f32 - lr * wd);
        let mj = b1 * m[j] + one_b1 * g;
        let sj = b2 * s[j] + one_b2 * g * g;
        value -= lr * (mj / c1) / (f32::sqrt(sj / c2) + eps);
        m[j] = mj;
        s[j] = sj;
        v[j] = F::cast_from(value);
    }
}

/// Progressive re-masking: the optimizer state of the new mask's j-th position — the old
/// moments where the position was already retrained (found by binary search in the old,
/// ascending index list), zero where it is new. One unit per new position.
#[cube(launch, launch_unchecked)]
pub fn sara_carry(
    new_index: &Array<u32>,
    old_index: &Array<u32>,
    old_m: &Array<f32>,
    old_s: &Array<f32>,
    new_m: &mut Array<f32>,
    new_s: &mut Array<f32>,
    old_nnz: u32,
) {
    let j = ABSOLUTE_POS;
    if j < new_m.len() {
        let flat = new_index[j];
        // Lower bound of `flat` in old_index[0..old_nnz).
        let mut lo = 0u32;
        let mut hi = old_nnz;
        while lo < hi {
            let mid = (lo + hi) / 2u32;
            if old_index[mid as usize] < flat {
                lo = mid + 1u32;
            } else {
                hi = mid;
            }
        }
        let mut m = 0.0f32;
        let mut s = 0.0f32;
        // Nested, not `&&`: the second test reads old_index[lo] only when lo is in range.
        #[allow(clippy::collapsible_if)]
        if lo < old_nnz {
            if old_index[lo as usize] == flat {
                m = old_m[lo as usize];
                s = old_s[lo as usize];
            }
        }
        new_m[j] = m;
        new_s[j] = s;
    }
}
