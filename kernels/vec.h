// Vector helpers shared by the C++ CPU kernels (kernels/<op>/cpu.cpp; kernels/_native.py compiles each
// with this folder on the include path). GCC/Clang vector extensions: 16 floats, one AVX-512 register,
// two AVX2 ones or four NEON ones, whatever the target.

#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

static inline v16 splat(float x) { return (v16){} + x; }
static inline v16 load(const float* p) { v16 x; memcpy(&x, p, sizeof x); return x; }
static inline void store(float* p, v16 x) { memcpy(p, &x, sizeof x); }

// the largest lane, in a fixed tree
static inline float hmax(v16 x) {
    v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7), b = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    a = a > b ? a : b;
    v4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3), d = __builtin_shufflevector(a, a, 4, 5, 6, 7);
    c = c > d ? c : d;
    float m = c[0] > c[1] ? c[0] : c[1], n = c[2] > c[3] ? c[2] : c[3];
    return m > n ? m : n;
}

// the sum of the lanes, in a fixed tree (the same order wherever it is called)
static inline float hsum(v16 x) {
    v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (c[0] + c[1]) + (c[2] + c[3]);
}

// 2^n p for a whole number n (as a float) in -126 .. 127
static inline v16 scale2(v16 p, v16 n) {
    i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
    v16 s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

// 2^x for x <= 0: exactly 0 below -126 (a masked score's -inf included), within 1 ulp elsewhere
static inline v16 exp2v(v16 x) {
    i16 under = x < splat(-126.0f);
    x = under ? splat(-126.0f) : x;
    v16 n = (x + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23)
    v16 r = x - n;                             // [-0.5, 0.5]
    // 2^r = e^(r ln 2): Taylor series to degree 7 (error under 1e-8)
    v16 p = splat(1.5252733804059840e-5f);
    p = p * r + 1.5403530393381606e-4f;
    p = p * r + 1.3333558146428443e-3f;
    p = p * r + 9.6181291076284772e-3f;
    p = p * r + 5.5504108664821580e-2f;
    p = p * r + 2.4022650695910071e-1f;
    p = p * r + 6.9314718055994531e-1f;
    p = p * r + 1.0f;
    return under ? splat(0.0f) : scale2(p, n);
}

// e^x for x <= 0: exactly 0 below -87, within 2 ulp elsewhere (Cody-Waite reduction to |r| <= ln2 / 2)
static inline v16 expv(v16 x) {
    i16 under = x < splat(-87.0f);
    x = under ? splat(-87.0f) : x;
    v16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    v16 r = x - n * 0.693145751953125f;  // ln 2, high part (n * hi is exact)
    r = r - n * 1.428606765330187e-06f;  // ln 2, low part
    v16 p = splat(1.9841269841269841e-4f);  // 1/7!, then Horner down to 1
    p = p * r + 1.3888888888888889e-3f;
    p = p * r + 8.3333333333333333e-3f;
    p = p * r + 4.1666666666666667e-2f;
    p = p * r + 1.6666666666666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return under ? splat(0.0f) : scale2(p, n);
}
