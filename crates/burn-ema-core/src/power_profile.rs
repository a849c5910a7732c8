//! The width of EDM2's power-function EMA profiles (Karras et al. 2024, "Analyzing and Improving
//! the Training Dynamics of Diffusion Models", Eqs. 123 and 126; NVlabs/edm2 `exp_to_std` /
//! `std_to_exp`).
//!
//! A power-function EMA ([`Schedule::PowerFunction`](crate::Schedule::PowerFunction)) with exponent
//! `gamma` averages the weights with a profile whose standard deviation, relative to the length
//! of training so far, is `sigma_rel`: a constant, so the EMA keeps the same relative width as
//! training goes on. EDM2 names profiles by `sigma_rel` (0.05 and 0.10 in its runs, `gamma`
//! 16.97 and 6.94).

use crate::error::EmaError;

/// The relative width of the power-function profile of exponent `gamma` (EDM2's `exp_to_std`):
/// `sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`. At most `1/sqrt(12) ≈ 0.2887`, at
/// `gamma = 0` (the plain running mean).
///
/// ```
/// use burn_ema_core::gamma_to_sigma_rel;
/// assert!((gamma_to_sigma_rel(6.94) - 0.1).abs() < 1e-4);
/// ```
pub fn gamma_to_sigma_rel(gamma: f64) -> f64 {
    ((gamma + 1.0) / ((gamma + 2.0).powi(2) * (gamma + 3.0))).sqrt()
}

/// The exponent of the power-function profile of relative width `sigma_rel` (EDM2's
/// `std_to_exp`): the largest real root of
/// `gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2)`.
///
/// `sigma_rel` must be in `(0, 1/sqrt(12)]`: wider profiles would need a negative exponent,
/// which [`Schedule::PowerFunction`](crate::Schedule::PowerFunction) does not take.
///
/// ```
/// use burn_ema_core::sigma_rel_to_gamma;
/// // EDM2's two profiles.
/// assert!((sigma_rel_to_gamma(0.05)? - 16.97).abs() < 0.01);
/// assert!((sigma_rel_to_gamma(0.10)? - 6.94).abs() < 0.01);
/// # Ok::<(), burn_ema_core::EmaError>(())
/// ```
pub fn sigma_rel_to_gamma(sigma_rel: f64) -> Result<f64, EmaError> {
    let widest = gamma_to_sigma_rel(0.0);
    if !(sigma_rel > 0.0 && sigma_rel <= widest) {
        return Err(EmaError::invalid(
            "sigma_rel",
            format!("must be in (0, {widest:.6}] (1/sqrt(12), gamma = 0), got {sigma_rel}"),
        ));
    }
    let t = sigma_rel.powi(-2);
    let cubic = |g: f64| ((g + 7.0) * g + 16.0 - t) * g + 12.0 - t;
    let slope = |g: f64| (3.0 * g + 14.0) * g + 16.0 - t;
    // Newton from above the largest root (the cubic is positive at `t` and convex right of
    // -7/3): the iterates fall monotonically onto it; stop when they no longer fall.
    let mut g = t;
    for _ in 0..200 {
        let next = g - cubic(g) / slope(g);
        // (Also stops on NaN: a comparison with NaN is false.)
        if next.partial_cmp(&g) != Some(std::cmp::Ordering::Less) {
            break;
        }
        g = next;
    }
    Ok(g.max(0.0))
}
