// Memory and undefined-behaviour check of the C++ CPU kernels (kernels/<op>/cpu.cpp) under AddressSanitizer
// and UBSan: exact-size heap buffers (a read or write past one is reported), shapes fuzzed across the
// kernels' boundaries (tiles of 8 queries, key blocks of 32 and 256, channel blocks of 16, token tiles of
// 256, 1-200 taps, vocabularies and rows not a multiple of 16, empty inputs, partial lo/hi ranges), each
// output checked against a float64 reference. Not part of the test suite (a build per kernel, ~1 min).
//
//   for op in attention:ATT norm:NORM logprob:LOGPROB fir:FIR; do
//     g++ -O3 -march=native -std=c++17 -fsanitize=address,undefined -fno-sanitize-recover=all -I . -I kernels \
//         -D${op#*:} "-DKERNEL=\"kernels/${op%:*}/cpu.cpp\"" benchmarks/sanitize_native.cpp -o /tmp/san_${op%:*} \
//       && /tmp/san_${op%:*}; done
//
// prints the largest deviation from the reference per kernel; any sanitizer report aborts.
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <vector>
#include <random>
#include KERNEL
static std::mt19937 rng(1);
static float* buf(size_t n, float scale = 1.0f) {
    float* p = (float*)malloc(n * sizeof(float) + (n == 0));
    std::normal_distribution<float> d(0, scale);
    for (size_t i = 0; i < n; i++) p[i] = d(rng);
    return p;
}
static double worst = 0;
#if defined(ATT)
static void one(int B, int H, int Lq, int off, int hd, int lo, int hi) {
    int Lk = off + Lq;
    size_t nq = (size_t)B * H * Lq * hd, nk = (size_t)B * H * Lk * hd;
    float *q = buf(nq), *k = buf(nk, 2), *v = buf(nk), *o = buf(nq);
    int64_t s[12] = {(int64_t)H * Lq * hd, (int64_t)Lq * hd, hd, (int64_t)H * Lk * hd, (int64_t)Lk * hd, hd,
                     (int64_t)H * Lk * hd, (int64_t)Lk * hd, hd, (int64_t)H * Lq * hd, (int64_t)Lq * hd, hd};
    if (causal_attention(q, k, v, o, H, Lq, Lk, hd, off, 1.0f / sqrtf(hd), s, lo, hi)) abort();
    for (int n = lo; n < hi; n++)
        for (int i = 0; i < Lq; i++) {
            const float* qi = q + (size_t)n * Lq * hd + (size_t)i * hd;
            std::vector<double> sc(off + i + 1);
            double m = -1e300, l = 0;
            for (int j = 0; j <= off + i; j++) {
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)qi[e] * k[(size_t)n * Lk * hd + (size_t)j * hd + e];
                sc[j] = d / sqrt(hd);
                m = fmax(m, sc[j]);
            }
            for (auto& x : sc) l += (x = exp(x - m));
            for (int e = 0; e < hd; e++) {
                double a = 0;
                for (int j = 0; j <= off + i; j++) a += sc[j] * v[(size_t)n * Lk * hd + (size_t)j * hd + e];
                worst = fmax(worst, fabs(a / l - o[(size_t)n * Lq * hd + (size_t)i * hd + e]));
            }
        }
    free(q); free(k); free(v); free(o);
}
int main() {
    int offs[] = {0, 1, 5, 31, 32, 33, 200, 223, 224, 225, 255, 256, 257, 300, 511, 512, 513};
    for (int hd : {16, 32, 64})
        for (int Lq = 1; Lq <= 20; Lq++)
            for (int off : offs) one(2, 3, Lq, off, hd, (Lq + off) % 6, 6 - (Lq % 2));
    for (int hd : {16, 32, 64}) for (int Lq : {255, 256, 257, 300}) one(1, 2, Lq, 0, hd, 0, 2);
    printf("attention worst %g\n", worst);
}
#elif defined(NORM)
int main() {
    for (int D = 1; D <= 200; D += (D < 40 ? 1 : 13))
        for (int rows : {0, 1, 3, 7})
            for (int res = 0; res < 2; res++) {
                size_t n = (size_t)rows * D;
                float *x = buf(n), *r = res ? buf(n) : nullptr, *u = res ? buf(n) : nullptr, *y = buf(n), *sc = buf(D);
                int lo = rows > 1 ? 1 : 0;
                rms_norm(x, r, sc, u, y, D, 1.0f / sqrtf(D), 1e-6f, lo, rows);
                for (int i = lo; i < rows; i++) {
                    double ss = 0;
                    for (int j = 0; j < D; j++) { double a = (double)x[i * D + j] + (r ? r[i * D + j] : 0); ss += a * a; }
                    double rms = sqrt(ss) / sqrt(D) + 1e-6;
                    for (int j = 0; j < D; j++) {
                        double a = (double)x[i * D + j] + (r ? r[i * D + j] : 0);
                        worst = fmax(worst, fabs(a / rms * sc[j] - y[i * D + j]));
                    }
                }
                free(x); free(r); free(u); free(y); free(sc);
            }
    printf("norm worst %g\n", worst);
}
#elif defined(LOGPROB)
int main() {
    for (int V = 1; V <= 600; V += (V < 70 ? 1 : 37))
        for (int N : {0, 1, 2, 5}) {
            int n = 3;
            size_t rows = (size_t)N * n;
            float* x = buf(rows * V, 5);
            std::vector<int64_t> tok(rows ? rows : 1);
            for (auto& t : tok) t = rng() % V;
            float* out = buf(rows);
            int64_t bad = token_logprobs(x, tok.data(), out, n, V, (int64_t)n * V, V, n, 1, 0, rows);
            if (bad) abort();
            for (size_t i = 0; i < rows; i++) {
                double m = -1e300, l = 0;
                for (int j = 0; j < V; j++) m = fmax(m, x[i * V + j]);
                for (int j = 0; j < V; j++) l += exp(x[i * V + j] - m);
                worst = fmax(worst, fabs(x[i * V + tok[i]] - m - log(l) - out[i]));
            }
            free(x); free(out);
        }
    printf("logprob worst %g\n", worst);
}
#elif defined(FIR)
int main() {
    int Ks[] = {1, 2, 3, 7, 8, 9, 16, 31, 32, 33, 64, 127, 128, 129, 200};
    int Ls[] = {0, 1, 2, 7, 8, 9, 255, 256, 257, 263, 600};
    int Cs[] = {1, 5, 16, 17, 20, 33};
    for (int K : Ks) for (int L : Ls) for (int C : Cs) for (int carry = 0; carry < 2; carry++) {
        int B = 2;
        float *x = buf((size_t)B * L * C), *g = buf((size_t)B * L * C), *w = buf((size_t)K * C), *Dk = buf(C);
        float *st = carry ? buf((size_t)B * (K - 1) * C) : nullptr, *y = buf((size_t)B * L * C);
        std::vector<float> st0(st ? st : x, st ? st + (size_t)B * (K - 1) * C : x);
        int nb = (C + 15) / 16, lo = nb > 1 ? 1 : 0;
        if (lo) if (fir_gate(x, g, w, carry ? Dk : nullptr, st, y, B, L, C, K, 0, lo)) abort();
        if (fir_gate(x, g, w, carry ? Dk : nullptr, st, y, B, L, C, K, lo, nb)) abort();
        for (int b = 0; b < B; b++) for (int t = 0; t < L; t++) for (int c = 0; c < C; c++) {
            double a = 0;
            for (int k = 0; k < K; k++) {
                int src = t - (K - 1) + k;
                double xi = src >= 0 ? x[((size_t)b * L + src) * C + c] : carry ? st0[((size_t)b * (K - 1) + (K - 1) + src) * C + c] : 0;
                a += w[k * C + c] * xi;
            }
            if (carry) a += Dk[c] * x[((size_t)b * L + t) * C + c];
            a *= g[((size_t)b * L + t) * C + c];
            worst = fmax(worst, fabs(a - y[((size_t)b * L + t) * C + c]) / (1 + fabs(a)));
        }
        free(x); free(g); free(w); free(Dk); free(st); free(y);
    }
    printf("fir worst rel %g\n", worst);
}
#endif
