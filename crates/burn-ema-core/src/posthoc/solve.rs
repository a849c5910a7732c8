//! EDM2's post-hoc EMA solve (Karras et al. 2024, Algorithm 3; NVlabs/edm2 `phema.py`
//! `power_function_correlation` and `solve_posthoc_coefficients`): which weighted sum of saved
//! power-function EMA snapshots best approximates the EMA of another width.
//!
//! Host-side `f64` arithmetic only.

use crate::error::EmaError;

/// A power-function EMA profile: the average of exponent `gamma` (see
/// [`sigma_rel_to_gamma`](crate::sigma_rel_to_gamma)) as of training step `step`. Its weight on
/// the parameters of step `τ` is `(gamma + 1) τ^gamma / step^(gamma + 1)` on `(0, step]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PowerProfile {
    /// The training step the average is taken at (`> 0`).
    pub step: u64,
    /// The profile's exponent (`>= 0`).
    pub gamma: f64,
}

impl PowerProfile {
    /// The profile of exponent `gamma` at `step`.
    pub fn new(step: u64, gamma: f64) -> Self {
        Self { step, gamma }
    }

    fn check(self, what: &'static str) -> Result<(), EmaError> {
        if self.step == 0 {
            return Err(EmaError::invalid(what, "step must be > 0"));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(EmaError::invalid(
                what,
                format!("gamma must be finite and >= 0, got {}", self.gamma),
            ));
        }
        Ok(())
    }
}

/// The inner product of two power-function profiles, `∫ p_a(τ) p_b(τ) dτ` (EDM2 Eq. 151,
/// `power_function_correlation`), in closed form.
pub fn power_function_correlation(a: PowerProfile, b: PowerProfile) -> f64 {
    let (ta, tb) = (a.step as f64, b.step as f64);
    let exponent = if ta < tb { b.gamma } else { -a.gamma };
    let num = (a.gamma + 1.0) * (b.gamma + 1.0) * (ta / tb).powf(exponent);
    let den = (a.gamma + b.gamma + 1.0) * ta.max(tb);
    num / den
}

/// Beyond this 1-norm condition number, an `f64` solve keeps fewer than two correct digits.
const MAX_CONDITION: f64 = 1e14;
/// Beyond this `sum |coefficient|`, the weighted sum of `f32` snapshots cancels so much that
/// its rounding error (up to `abs_sum · 2^-24` of the weights' scale) is no longer negligible.
const MAX_ABS_SUM: f64 = 1e4;

/// The coefficients of EDM2's post-hoc reconstruction: `x` such that `Σ x_i · snapshot_i`
/// approximates the EMA of profile `target`, by least squares over the profiles
/// (`solve(A, b)` with `A_ij = ⟨p_i, p_j⟩`, `b_i = ⟨p_i, p_target⟩`), then normalised to sum to
/// 1, exactly as EDM2's `solve_posthoc_coefficients`.
///
/// EDM2's reconstruction uses only snapshots at or before the target step (the caller picks
/// them: [`PostHocSnapshots`](crate::PostHocSnapshots) does). Fails on an empty list, a step of
/// 0 or a negative `gamma` ([`EmaError::InvalidConfig`]), and on a system too close to singular
/// to trust ([`EmaError::IllConditioned`]: e.g. the same profile twice at one step).
///
/// ```
/// use burn_ema_core::{PowerProfile, posthoc_coefficients, sigma_rel_to_gamma};
/// let (narrow, wide) = (sigma_rel_to_gamma(0.05)?, sigma_rel_to_gamma(0.10)?);
/// let saved = [
///     PowerProfile::new(1000, narrow), PowerProfile::new(1000, wide),
///     PowerProfile::new(2000, narrow), PowerProfile::new(2000, wide),
/// ];
/// // A tracked profile at a snapshot's step is that snapshot.
/// let x = posthoc_coefficients(&saved, PowerProfile::new(2000, wide))?;
/// assert!((x[3] - 1.0).abs() < 1e-9 && x[..3].iter().all(|c| c.abs() < 1e-9));
/// // One in between mixes them.
/// let x = posthoc_coefficients(&saved, PowerProfile::new(2000, sigma_rel_to_gamma(0.07)?))?;
/// assert!((x.iter().sum::<f64>() - 1.0).abs() < 1e-12);
/// # Ok::<(), burn_ema_core::EmaError>(())
/// ```
pub fn posthoc_coefficients(
    snapshots: &[PowerProfile],
    target: PowerProfile,
) -> Result<Vec<f64>, EmaError> {
    if snapshots.is_empty() {
        return Err(EmaError::invalid(
            "snapshots",
            "is empty: post-hoc EMA needs at least one snapshot",
        ));
    }
    target.check("target")?;
    for s in snapshots {
        s.check("snapshots")?;
    }
    let n = snapshots.len();
    let a: Vec<Vec<f64>> = snapshots
        .iter()
        .map(|&p| {
            snapshots
                .iter()
                .map(|&q| power_function_correlation(p, q))
                .collect()
        })
        .collect();
    let b: Vec<f64> = snapshots
        .iter()
        .map(|&p| power_function_correlation(p, target))
        .collect();
    let lu = Lu::factor(a.clone());
    let condition = match &lu {
        Some(lu) => norm1(&a) * lu.inverse_norm1(),
        None => f64::INFINITY,
    };
    let advice = "drop snapshots of nearly the same profile at the same step, or ask for a \
                  width nearer the tracked ones";
    let (Some(lu), true) = (lu, condition <= MAX_CONDITION) else {
        return Err(EmaError::IllConditioned {
            condition,
            abs_sum: None,
            advice,
        });
    };
    let mut x = lu.solve(b);
    let sum: f64 = x.iter().sum();
    x.iter_mut().for_each(|c| *c /= sum);
    let abs_sum: f64 = x.iter().map(|c| c.abs()).sum();
    if abs_sum.is_nan() || abs_sum > MAX_ABS_SUM {
        return Err(EmaError::IllConditioned {
            condition,
            abs_sum: Some(abs_sum),
            advice,
        });
    }
    debug_assert_eq!(x.len(), n);
    Ok(x)
}

/// The 1-norm (largest column sum of absolute values).
fn norm1(a: &[Vec<f64>]) -> f64 {
    (0..a.len())
        .map(|j| a.iter().map(|row| row[j].abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

/// An LU factorisation with partial pivoting (`PA = LU`), as LAPACK's `getrf` behind
/// `np.linalg.solve`.
struct Lu {
    lu: Vec<Vec<f64>>,
    pivots: Vec<usize>,
}

impl Lu {
    /// `None` for an exactly singular matrix (or one with a non-finite entry).
    fn factor(mut lu: Vec<Vec<f64>>) -> Option<Self> {
        let n = lu.len();
        let mut pivots = Vec::with_capacity(n);
        for k in 0..n {
            let p = (k..n).max_by(|&i, &j| lu[i][k].abs().total_cmp(&lu[j][k].abs()))?;
            if !(lu[p][k].abs() > 0.0 && lu[p][k].is_finite()) {
                return None;
            }
            lu.swap(k, p);
            pivots.push(p);
            let (top, rest) = lu.split_at_mut(k + 1);
            let pivot_row = &top[k];
            for row in rest {
                let factor = row[k] / pivot_row[k];
                row[k] = factor;
                for j in k + 1..n {
                    row[j] -= factor * pivot_row[j];
                }
            }
        }
        Some(Self { lu, pivots })
    }

    fn solve(&self, mut b: Vec<f64>) -> Vec<f64> {
        let n = b.len();
        for (k, &p) in self.pivots.iter().enumerate() {
            b.swap(k, p);
        }
        for i in 0..n {
            let s: f64 = (0..i).map(|j| self.lu[i][j] * b[j]).sum();
            b[i] -= s;
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|j| self.lu[i][j] * b[j]).sum();
            b[i] = (b[i] - s) / self.lu[i][i];
        }
        b
    }

    /// `‖A⁻¹‖₁`, column by column.
    fn inverse_norm1(&self) -> f64 {
        let n = self.lu.len();
        (0..n)
            .map(|j| {
                let mut e = vec![0.0; n];
                e[j] = 1.0;
                self.solve(e).iter().map(|v| v.abs()).sum::<f64>()
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lu_solves_a_permuted_system_exactly() {
        // [[0, 2], [4, 1]] x = [2, 9]: x = [2, 1] (the first pivot must swap rows).
        let lu = Lu::factor(vec![vec![0.0, 2.0], vec![4.0, 1.0]]).unwrap();
        assert_eq!(lu.solve(vec![2.0, 9.0]), vec![2.0, 1.0]);
        assert!(Lu::factor(vec![vec![1.0, 2.0], vec![2.0, 4.0]]).is_none());
    }

    #[test]
    fn the_same_profile_twice_is_ill_conditioned() {
        let p = PowerProfile::new(100, 6.94);
        let err = posthoc_coefficients(&[p, p], p).unwrap_err();
        assert!(matches!(err, EmaError::IllConditioned { .. }), "{err:?}");
    }
}
