//! Element-wise building blocks of the plans: gather, scatter and copy of packed values (SaRA's
//! and N:M's trainable values at their mask positions), one unit per element.

// `#[cube(launch)]` generates undocumented modules and launch functions next to each kernel.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// out[j] = src[index[j]]: values packed in the order of `index`.
#[cube(launch, launch_unchecked)]
pub fn gather<F: Float>(src: &Array<F>, index: &Array<u32>, out: &mut Array<F>) {
    let j = ABSOLUTE_POS;
    if j < out.len() {
        out[j] = src[index[j] as usize];
    }
}

/// dst[index[j]] = values[j], in place (the other elements of `dst` are left as they are).
#[cube(launch, launch_unchecked)]
pub fn scatter<F: Float>(values: &Array<F>, index: &Array<u32>, dst: &mut Array<F>) {
    let j = ABSOLUTE_POS;
    if j < values.len() {
        let at = index[j] as usize;
        dst[at] = values[j];
    }
}

/// dst = src, element by element.
#[cube(launch, launch_unchecked)]
pub fn copy<F: Float>(src: &Array<F>, dst: &mut Array<F>) {
    let j = ABSOLUTE_POS;
    if j < dst.len() {
        dst[j] = src[j];
    }
}
