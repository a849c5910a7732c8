/* The pass of ../shared/bench/triad.c (the C bound the CPU path is held to), as a function the
 * benchmarks load and call in the same process as the update, alternating with it sample by
 * sample: a shared VM's bandwidth drifts by a third within a minute, so only figures taken
 * together compare. Built by scripts/c-triad: gcc -O3 -march=native -fopenmp -shared -fPIC. */
#include <stddef.h>

/* s[i] = d*s[i] + (1-d)*p[i] over n floats, OpenMP threads splitting the array statically. */
void burn_ema_c_triad(float *s, const float *p, size_t n, float d) {
    const float e = 1.0f - d;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) s[i] = d * s[i] + e * p[i];
}
