//! The C triad (`benches/c/triad_pass.c`, the loop of `../shared/bench/triad.c`) loaded from the
//! shared library `BURN_EMA_C_TRIAD` names, so the benchmarks time it in the same process as
//! the update, sample by sample (`scripts/c-triad` builds it and runs them).

use super::values;

type Pass = unsafe extern "C" fn(*mut f32, *const f32, usize, f32);

/// The C pass and one flat pair of arrays for it.
pub struct CTriad {
    pass: Pass,
    shadow: Vec<f32>,
    value: Vec<f32>,
    /// Keeps the library mapped while `pass` points into it.
    _library: libloading::Library,
}

impl CTriad {
    /// The C triad over `n` floats, or `None` (said on stderr) when `BURN_EMA_C_TRIAD` is not
    /// set. Panics when it is set and the library cannot be loaded: a benchmark asked for it.
    pub fn load(n: usize) -> Option<Self> {
        let Some(path) = std::env::var_os("BURN_EMA_C_TRIAD") else {
            // Once a run, not once per parameter set and backend.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "NOT RUN: the C triad rows (BURN_EMA_C_TRIAD is not set; scripts/c-triad)"
                )
            });
            return None;
        };
        // SAFETY: the library is benches/c/triad_pass.c built by scripts/c-triad: no
        // initialisers beyond OpenMP's runtime, and the symbol has the signature of `Pass`.
        let (library, pass) = unsafe {
            let library = libloading::Library::new(&path)
                .unwrap_or_else(|e| panic!("BURN_EMA_C_TRIAD={path:?}: {e}"));
            let pass: Pass = *library
                .get::<Pass>(b"burn_ema_c_triad\0")
                .unwrap_or_else(|e| panic!("BURN_EMA_C_TRIAD={path:?}: {e}"));
            (library, pass)
        };
        Some(Self {
            pass,
            shadow: values(n, 1.0),
            value: values(n, 2.0),
            _library: library,
        })
    }

    /// One pass: `s = d·s + (1 − d)·p` over every element.
    pub fn pass(&mut self, decay: f32) {
        // SAFETY: both arrays hold `len` floats and are not otherwise borrowed.
        unsafe {
            (self.pass)(
                self.shadow.as_mut_ptr(),
                self.value.as_ptr(),
                self.shadow.len(),
                decay,
            )
        }
    }
}
