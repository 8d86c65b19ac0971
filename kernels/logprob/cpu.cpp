// log softmax(logits)[token] per position, float32, without writing the [rows, V] log-softmax
// (kernels/logprob/cpu.py calls it through ctypes). Per row: the max, then the sum of exp(x - max)
// in 16 lanes, then (x[token] - max) - log(sum), as torch's log_softmax orders it. A row's numbers do
// not depend on the other rows.

#include "vec.h"

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
