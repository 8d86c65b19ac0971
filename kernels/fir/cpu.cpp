// Gated Hyena-MR filter over a window, float32 (kernels/fir/cpu.py calls it through ctypes for long
// filters): y[t, c] = (sum_k w[k, c] x[t - (K-1) + k, c] + D[c] x[t, c]) * g[t, c], the inputs before the
// window coming from the history (state) or zeros, and the history moved on.
//
// Register-tiled: 8 tokens x 16 channels of sums stay in vector registers through all K taps, so each
// tap loads a weight vector and 8 input rows for 128 multiply-adds, where numba's loop (fir_gate) loads
// and stores its sums every 4 taps: 1.3x faster for 128 taps on the quick start's windows, slower for
// Hyena-SE's 7 (the copy into the tile buffer is then most of the work). Compiled without contraction
// (kernels/_native.py, OP_FLAGS): every output adds its taps oldest first, a product then a sum each, as
// the numba kernels and the decoding step do, so the bits are theirs and a prefill continued by
// decoding gives the numbers of one call.

#include <stdlib.h>

#include "vec.h"

enum { W = 16, T = 8, TILE = 256 };  // channels per block, tokens per register tile, tokens per buffer

// channels c0 .. c0 + w - 1 (w <= 16) of one batch row: x, g, y [L, C], state [K-1, C] or null
static void block(const float* x, const float* g, const float* wt, const float* Dskip, float* state, float* y,
                  int64_t L, int64_t C, int64_t K, int64_t c0, int64_t w, float* ext, float* wb) {
    const int64_t K1 = K - 1;
    for (int64_t k = 0; k < K; k++)  // this block's taps, zero past w: [K, 16]
        for (int64_t e = 0; e < W; e++) wb[k * W + e] = e < w ? wt[k * C + c0 + e] : 0.0f;
    for (int64_t s = 0; s < L; s += TILE) {
        int64_t n = L - s < TILE ? L - s : TILE;
        // ext rows: inputs s - K1 .. s + n - 1, then T rows of zeros (a tile's last tokens read past n)
        for (int64_t i = 0; i < K1 + n + T; i++) {
            int64_t src = s - K1 + i;
            const float* in = src >= s + n ? nullptr : src >= 0 ? x + src * C + c0 : state ? state + (K1 + src) * C + c0 : nullptr;
            for (int64_t e = 0; e < W; e++) ext[i * W + e] = in && e < w ? in[e] : 0.0f;
        }
        for (int64_t t0 = 0; t0 < n; t0 += T) {
            v16 acc[T];
            for (int j = 0; j < T; j++) acc[j] = (v16){};
            const float* base = ext + t0 * W;
            for (int64_t k = 0; k < K; k++) {
                v16 wk = load(wb + k * W);
                for (int j = 0; j < T; j++) acc[j] += load(base + (k + j) * W) * wk;
            }
            for (int j = 0; j < T && t0 + j < n; j++) {
                int64_t t = s + t0 + j;
                const float *xt = x + t * C + c0, *gt = g + t * C + c0;
                float* yt = y + t * C + c0;
                for (int64_t e = 0; e < w; e++) yt[e] = (Dskip ? acc[j][e] + Dskip[c0 + e] * xt[e] : acc[j][e]) * gt[e];
            }
        }
    }
    if (state)  // the last K-1 rows of [state, x]: row L + i - K1 is read at or after the row written
        for (int64_t i = 0; i < K1; i++) {
            int64_t src = L + i - K1;
            const float* in = src >= 0 ? x + src * C + c0 : state + (K1 + src) * C + c0;
            for (int64_t e = 0; e < w; e++) state[i * C + c0 + e] = in[e];
        }
}

extern "C" {

// Channel blocks [lo, hi) (16 channels each; the last holds C % 16 when C is not a multiple of 16) of
// every batch row: x1v, x2, y [B, L, C]; wt [K, C] (each channel's taps, current token last); Dskip [C]
// or null; state [B, K-1, C] or null (zeros before the window, no history kept). Returns 1 when memory
// for the buffers could not be had.
int fir_gate(const float* x1v, const float* x2, const float* wt, const float* Dskip, float* state, float* y,
             int64_t B, int64_t L, int64_t C, int64_t K, int64_t lo, int64_t hi) {
    float* ext = (float*)aligned_alloc(64, (size_t)((K - 1 + TILE + T) * W * sizeof(float)));
    float* wb = (float*)aligned_alloc(64, (size_t)(K * W * sizeof(float)));
    if (!ext || !wb) {
        free(ext);
        free(wb);
        return 1;
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t blk = lo; blk < hi; blk++) {
            int64_t c0 = blk * W, w = C - c0 < W ? C - c0 : W;
            block(x1v + b * L * C, x2 + b * L * C, wt, Dskip, state ? state + b * (K - 1) * C : nullptr,
                  y + b * L * C, L, C, K, c0, w, ext, wb);
        }
    free(ext);
    free(wb);
    return 0;
}

}
