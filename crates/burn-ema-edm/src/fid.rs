//! The Fréchet distance between two sets of features (Heusel et al. 2017), the "FID" once the
//! features come from a classifier: the squared distance of the means plus
//! `tr(Σ₁ + Σ₂ − 2 (Σ₁^{½} Σ₂ Σ₁^{½})^{½})`.
//!
//! The matrix square roots come from nalgebra's symmetric eigendecomposition (the covariances
//! are symmetric positive semi-definite; eigenvalues below 0 from rounding are taken as 0), not
//! from an iterative `sqrtm`: `tr((Σ₁Σ₂)^{½})` equals `tr((Σ₁^{½}Σ₂Σ₁^{½})^{½})` (similar
//! matrices), and the latter is symmetric. `scripts/fid_reference.py` computes the same with
//! scipy's `sqrtm`, as pytorch-fid does, for the test's fixture.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// The mean and covariance of a set of feature vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussian {
    /// The mean, `d` values.
    pub mean: DVector<f64>,
    /// The covariance `d × d`, unbiased (`1/(n−1)`, as numpy's `cov`).
    pub cov: DMatrix<f64>,
}

impl Gaussian {
    /// The statistics of `n` feature vectors of `d` values each, row after row in `features`.
    /// `None` with fewer than two vectors or a length that is not a multiple of `d`.
    pub fn of(features: &[f32], d: usize) -> Option<Self> {
        if d == 0 || !features.len().is_multiple_of(d) || features.len() / d < 2 {
            return None;
        }
        let n = features.len() / d;
        let x = DMatrix::from_row_iterator(n, d, features.iter().map(|&v| v as f64));
        let mean = DVector::from_iterator(d, (0..d).map(|j| x.column(j).mean()));
        let mut centred = x;
        for mut row in centred.row_iter_mut() {
            row -= mean.transpose();
        }
        let cov = centred.transpose() * &centred / (n as f64 - 1.0);
        Some(Self { mean, cov })
    }
}

/// The symmetric square root of a symmetric positive semi-definite matrix.
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(symmetrized(m));
    let roots = eigen.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eigen.eigenvectors * DMatrix::from_diagonal(&roots) * eigen.eigenvectors.transpose()
}

fn symmetrized(m: &DMatrix<f64>) -> DMatrix<f64> {
    (m + m.transpose()) * 0.5
}

/// The Fréchet distance between two Gaussians of the same dimension.
///
/// # Panics
/// When the dimensions differ (a programming error: both come from one feature extractor).
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> f64 {
    assert_eq!(a.mean.len(), b.mean.len(), "features of one extractor");
    let mean_term = (&a.mean - &b.mean).norm_squared();
    let root_a = sqrt_psd(&a.cov);
    let product = symmetrized(&(&root_a * &b.cov * &root_a));
    let cross: f64 = SymmetricEigen::new(product)
        .eigenvalues
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    mean_term + a.cov.trace() + b.cov.trace() - 2.0 * cross
}
