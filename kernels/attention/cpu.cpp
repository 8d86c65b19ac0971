// Causal attention of a chunk of queries over a KV cache, float32, one CPU core per call.
//
// Compiled on first use with the system's C++ compiler (kernels/_native.py) and called through
// ctypes. What it does that torch's CPU flash kernel does not: at head sizes of 16-64 it keeps a
// tile of queries' scores and outputs in vector registers (GCC/Clang vector extensions, no
// intrinsics, so any target the compiler knows), and it skips the keys a causal query cannot see
// instead of computing the chunk's diagonal block whole (benchmarks/README.md, tenth round).
//
// Layout: q [B, H, Lq, hd], k and v [B, H, Lk, hd], o [B, H, Lq, hd], each with its own strides for
// B, H and positions and a contiguous last axis. Query i sits at position offset + i and sees keys
// 0 .. offset + i. Per query the keys are taken in blocks of KB from key 0 with an online softmax
// (base 2: the scale folds log2(e)), so a query's result does not depend on how many queries share
// the call or on the chunk it came in: the same bits in a full forward and a chunked one.

#include <stdlib.h>

#include "vec.h"

enum { QT = 8, KB = 256 };  // queries per tile, keys per softmax block

// S[i][0 .. 32) = qs[i] . kt[:, 0 .. 32) for the tile's QT queries: QT x 2 vector accumulators.
// Separate functions (not inlined) so that each loop's accumulators get the vector registers: inlined
// together, the compiler kept the PV accumulators in memory and the loop ran at half speed.
template <int HD>
__attribute__((noinline)) static void scores(const float (*qs)[HD], const float* kt, int64_t ldk, float (*S)[KB], int bn) {
    for (int j0 = 0; j0 < bn; j0 += 32) {
        v16 s[QT][2];
        for (int i = 0; i < QT; i++) s[i][0] = s[i][1] = splat(0.0f);
        for (int d = 0; d < HD; d++) {
            v16 k0 = load(kt + d * ldk + j0), k1 = load(kt + d * ldk + j0 + 16);
            for (int i = 0; i < QT; i++) {
                s[i][0] += qs[i][d] * k0;
                s[i][1] += qs[i][d] * k1;
            }
        }
        for (int i = 0; i < QT; i++) {
            store(&S[i][j0], s[i][0]);
            store(&S[i][j0 + 16], s[i][1]);
        }
    }
}

// acc[i] += sum_j P[i][j] v[j] for G queries of the tile (G x HD/16 vector accumulators)
template <int HD, int G>
__attribute__((noinline)) static void weigh(v16 (*acc)[HD / 16], const float (*P)[KB], const float* v, int64_t sv, int bn) {
    constexpr int NV = HD / 16;
    v16 a[G][NV];
    for (int i = 0; i < G; i++)
        for (int t = 0; t < NV; t++) a[i][t] = acc[i][t];
    for (int j = 0; j < bn; j++) {
        v16 vj[NV];
        for (int t = 0; t < NV; t++) vj[t] = load(v + j * sv + 16 * t);
        for (int i = 0; i < G; i++)
            for (int t = 0; t < NV; t++) a[i][t] += P[i][j] * vj[t];
    }
    for (int i = 0; i < G; i++)
        for (int t = 0; t < NV; t++) acc[i][t] = a[i][t];
}

template <int HD>
static void head(const float* q, const float* k, const float* v, float* o, int64_t sq, int64_t sk, int64_t sv, int64_t so,
                 int Lq, int Lk, int offset, float scale, float* kt, int64_t ldk) {
    constexpr int NV = HD / 16, G = 16 / NV < QT ? (16 / NV > 0 ? 16 / NV : 1) : QT;
    // the keys transposed ([hd, ldk], zero past Lk), so that a vector holds one dim of 16 keys
    for (int d = 0; d < HD; d++)
        for (int j = 0; j < ldk; j++) kt[d * ldk + j] = j < Lk ? k[j * sk + d] : 0.0f;
    const float c = scale * 1.4426950408889634f;  // scores in base 2
    alignas(64) float qs[QT][HD];
    alignas(64) float S[QT][KB];
    alignas(64) v16 acc[QT][NV];
    const v16 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int q0 = 0; q0 < Lq; q0 += QT) {
        int rows = Lq - q0 < QT ? Lq - q0 : QT;
        for (int i = 0; i < QT; i++)  // a short last tile repeats its last query (its results are dropped)
            for (int d = 0; d < HD; d++) qs[i][d] = q[(q0 + (i < rows ? i : rows - 1)) * sq + d] * c;
        float m[QT], l[QT];
        for (int i = 0; i < QT; i++) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
            for (int t = 0; t < NV; t++) acc[i][t] = splat(0.0f);
        }
        int kend = offset + q0 + rows;  // keys the tile's last query sees
        if (kend > Lk) kend = Lk;
        for (int b0 = 0; b0 < kend; b0 += KB) {
            int bn = kend - b0 < KB ? kend - b0 : KB;
            int bnv = (bn + 31) / 32 * 32;
            scores<HD>(qs, kt + b0, ldk, S, bnv);
            for (int i = 0; i < QT; i++) {
                float last = (float)(offset + q0 + i < kend - 1 ? offset + q0 + i : kend - 1);
                v16 vm = splat(-INFINITY);
                for (int j = 0; j < bnv; j += 16) {
                    v16 x = load(&S[i][j]);
                    x = iota + (float)(b0 + j) > splat(last) ? splat(-INFINITY) : x;
                    store(&S[i][j], x);
                    vm = x > vm ? x : vm;
                }
                float mb = hmax(vm), mn = mb > m[i] ? mb : m[i];
                // a block with no key this query sees leaves it as it was: alpha 1, p 0
                float alpha = exp2f(m[i] - mn);
                v16 sum = splat(0.0f);
                for (int j = 0; j < bnv; j += 16) {
                    v16 p = exp2v(load(&S[i][j]) - mn);
                    sum += p;
                    store(&S[i][j], p);
                }
                l[i] = l[i] * alpha + hsum(sum);
                m[i] = mn;
                for (int t = 0; t < NV; t++) acc[i][t] *= alpha;
            }
            // the keys every query of the tile sees, in register tiles; then the few on the diagonal that
            // only its later queries see, each query its own: a masked key's weight is 0, but 0 times an
            // infinite or NaN value is NaN, which would reach the queries before that key
            int all = offset + q0 + 1 - b0;
            all = all < 0 ? 0 : all > bn ? bn : all;
            for (int i = 0; i < QT; i += G) weigh<HD, G>(acc + i, S + i, v + b0 * sv, sv, all);
            for (int i = 0; i < rows; i++) {
                int own = offset + q0 + i + 1 - b0;  // the keys of this block query i sees
                own = own > bn ? bn : own;
                if (own > all) weigh<HD, 1>(acc + i, (const float (*)[KB])(S[i] + all), v + (b0 + all) * sv, sv, own - all);
            }
        }
        for (int i = 0; i < rows; i++) {
            float inv = 1.0f / l[i];
            for (int t = 0; t < NV; t++) store(o + (q0 + i) * so + 16 * t, acc[i][t] * inv);
        }
    }
}

extern "C" {

// The heads [lo, hi) of the flattened B x H: head n is (n / H, n % H). Returns 0, or 1 when memory
// for the transposed keys could not be had, 2 for a head size without a kernel (at 128, Evo 2 7B's,
// torch's flash kernel is 5% faster: benchmarks/README.md, tenth round).
int causal_attention(const float* q, const float* k, const float* v, float* o, int H, int Lq, int Lk, int hd,
                     int offset, float scale, const int64_t* strides, int lo, int hi) {
    // strides: q (b, h, pos), k (b, h, pos), v (b, h, pos), o (b, h, pos), in elements
    if (hd != 16 && hd != 32 && hd != 64) return 2;
    int64_t ldk = (Lk + 31) / 32 * 32;
    float* kt = (float*)aligned_alloc(64, (size_t)(ldk * hd * sizeof(float)));
    if (!kt) return 1;
    const int64_t* s = strides;
    for (int n = lo; n < hi; n++) {
        int64_t b = n / H, h = n % H;
        const float *qn = q + b * s[0] + h * s[1], *kn = k + b * s[3] + h * s[4], *vn = v + b * s[6] + h * s[7];
        float* on = o + b * s[9] + h * s[10];
        if (hd == 16) head<16>(qn, kn, vn, on, s[2], s[5], s[8], s[11], Lq, Lk, offset, scale, kt, ldk);
        else if (hd == 32) head<32>(qn, kn, vn, on, s[2], s[5], s[8], s[11], Lq, Lk, offset, scale, kt, ldk);
        else head<64>(qn, kn, vn, on, s[2], s[5], s[8], s[11], Lq, Lk, offset, scale, kt, ldk);
    }
    free(kt);
    return 0;
}

}
