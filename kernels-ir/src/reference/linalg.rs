//! The one place the reference executor calls a linear-algebra crate: a thin SVD from faer
//! (pure Rust, LAPACK-grade accuracy). nalgebra 0.34's SVD was tried first and rejected: it
//! occasionally loses accuracy on rank-deficient 3×3 blocks (recompose error ~4e-3 on a
//! Monarch sub-block; dimforge/nalgebra#1172), which an oracle cannot afford.

use super::ReferenceError;

/// A thin SVD `A = U·diag(s)·Vᵀ` of an `rows × cols` matrix, singular values nonincreasing.
pub struct ThinSvd {
    /// Rank of the thin factorisation, `min(rows, cols)`.
    pub k: usize,
    /// `U` [rows, k], row-major.
    pub u: Vec<f64>,
    /// Singular values, nonincreasing.
    pub s: Vec<f64>,
    /// `V` [cols, k], row-major.
    pub v: Vec<f64>,
}

/// The thin SVD of the matrix whose (i, j) entry is `a(i, j)`.
pub fn thin_svd(
    rows: usize,
    cols: usize,
    what: &str,
    a: impl Fn(usize, usize) -> f64,
) -> Result<ThinSvd, ReferenceError> {
    let k = rows.min(cols);
    if k == 0 {
        return Ok(ThinSvd {
            k,
            u: vec![],
            s: vec![],
            v: vec![],
        });
    }
    let m = faer::Mat::<f64>::from_fn(rows, cols, a);
    let svd = m.thin_svd().map_err(|e| ReferenceError::BadValue {
        name: what.to_string(),
        message: format!("the SVD did not converge ({e:?}); check the tensor for extreme values"),
    })?;
    let (u, v, s) = (svd.U(), svd.V(), svd.S().column_vector());
    Ok(ThinSvd {
        k,
        u: (0..rows * k).map(|f| u[(f / k, f % k)]).collect(),
        s: (0..k).map(|c| s[c]).collect(),
        v: (0..cols * k).map(|f| v[(f / k, f % k)]).collect(),
    })
}
