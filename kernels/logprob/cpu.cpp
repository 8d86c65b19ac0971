// log softmax(logits)[token] per position, float32, without writing the [rows, V] log-softmax
// (kernels/logprob/cpu.py calls it through ctypes). Per row: the max, then the sum of exp(x - max)
// in 16 lanes, then (x[token] - max) - log(sum), as torch's log_softmax orders it. A row's numbers do
// not depend on the other rows.

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

static inline v16 splat(float x) { return (v16){} + x; }
static inline v16 load(const float* p) { v16 x; memcpy(&x, p, sizeof x); return x; }

// e^x for x <= 0 within 2 ulp, exactly 0 below -87 (Cody-Waite reduction to |r| <= ln2 / 2)
static inline v16 expv(v16 x) {
    i16 under = x < splat(-87.0f);
    x = under ? splat(-87.0f) : x;
    v16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    v16 r = x - n * 0.693145751953125f;  // ln 2, high part (exact in float: n * hi has no rounding)
    r = r - n * 1.428606765330187e-06f;  // ln 2, low part
    v16 p = splat(1.9841269841269841e-4f);  // 1/7!, then Horner down to 1
    p = p * r + 1.3888888888888889e-3f;
    p = p * r + 8.3333333333333333e-3f;
    p = p * r + 4.1666666666666667e-2f;
    p = p * r + 1.6666666666666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
    v16 scale;
    memcpy(&scale, &bits, sizeof scale);
    return under ? splat(0.0f) : p * scale;
}

static inline float hmax(v16 x) {
    v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7), b = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    a = a > b ? a : b;
    v4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3), d = __builtin_shufflevector(a, a, 4, 5, 6, 7);
    c = c > d ? c : d;
    float m = c[0] > c[1] ? c[0] : c[1], n = c[2] > c[3] ? c[2] : c[3];
    return m > n ? m : n;
}

static inline float hsum(v16 x) {
    v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (c[0] + c[1]) + (c[2] + c[3]);
}

extern "C" {

// Rows [lo, hi) of the N x n positions: logits of position (b, t) at logits + b * sb + t * st (V
// contiguous floats), its token at tokens[b * tb + t * tt]; out [N, n] contiguous. Returns the number
// of tokens outside 0 .. V - 1 (their outputs are NaN).
int64_t token_logprobs(const float* logits, const int64_t* tokens, float* out, int64_t n, int V, int64_t sb, int64_t st,
                    int64_t tb, int64_t tt, int64_t lo, int64_t hi) {
    const int W = V / 16 * 16;
    int64_t bad = 0;
    for (int64_t i = lo; i < hi; i++) {
        int64_t b = i / n, t = i % n;
        const float* x = logits + b * sb + t * st;
        int64_t tok = tokens[b * tb + t * tt];
        v16 vm = splat(-INFINITY);
        float m = -INFINITY;
        for (int j = 0; j < W; j += 16) {
            v16 a = load(x + j);
            vm = a > vm ? a : vm;
        }
        for (int j = W; j < V; j++) m = x[j] > m ? x[j] : m;
        float mv = hmax(vm);
        m = mv > m ? mv : m;
        v16 vs = splat(0.0f);
        float tail = 0.0f;
        for (int j = 0; j < W; j += 16) vs += expv(load(x + j) - m);
        for (int j = W; j < V; j++) {
            v16 e = expv(splat(x[j] - m));
            tail += e[0];
        }
        float lse = logf(hsum(vs) + tail);
        if (tok < 0 || tok >= V) {
            bad++;
            out[i] = NAN;
        } else {
            out[i] = (x[tok] - m) - lse;
        }
    }
    return bad;
}

}
