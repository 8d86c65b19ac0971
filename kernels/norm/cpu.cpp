// RMSNorm as StripedHyena defines it (eps added to the RMS, outside the square root), optionally with the
// residual add before it, in one pass over each row, float32 (kernels/norm/cpu.py calls it through ctypes).
//
// torch makes three passes over [rows, D] for the norm (the norm, the division, the scale) and one more
// for the add; here each row is read once into L1 and written once. The sum of squares runs in 16 lanes
// (then the tail, then the lanes in a fixed tree): a row's numbers do not depend on the other rows.

#include "vec.h"

extern "C" {

// Rows [lo, hi) of x [rows, D]: u = x + r where r is given (else u is x), y = u / (||u|| * inv_sqrt_d + eps) * scale.
// x, r, u and y are row-major with row stride D; u may be null when r is.
void rms_norm(const float* x, const float* r, const float* scale, float* u, float* y, int D, float inv_sqrt_d,
              float eps, int64_t lo, int64_t hi) {
    const int V = D / 16 * 16;
    for (int64_t i = lo; i < hi; i++) {
        const float* xi = x + i * D;
        v16 acc = {};
        float tail = 0.0f;
        if (r) {
            const float* ri = r + i * D;
            float* ui = u + i * D;
            for (int j = 0; j < V; j += 16) {
                v16 a = load(xi + j) + load(ri + j);
                store(ui + j, a);
                acc += a * a;
            }
            for (int j = V; j < D; j++) {
                ui[j] = xi[j] + ri[j];
                tail += ui[j] * ui[j];
            }
            xi = ui;
        } else {
            for (int j = 0; j < V; j += 16) {
                v16 a = load(xi + j);
                acc += a * a;
            }
            for (int j = V; j < D; j++) tail += xi[j] * xi[j];
        }
        float rms = sqrtf(hsum(acc) + tail) * inv_sqrt_d + eps;
        float* yi = y + i * D;
        for (int j = 0; j < V; j += 16) store(yi + j, load(xi + j) / rms * load(scale + j));
        for (int j = V; j < D; j++) yi[j] = xi[j] / rms * scale[j];
    }
}

}
