/* Hand-written AVX2 reference kernels for bench/bench_ties_floor.py: the cheapest code we can write for one
 * bf16 weighted sum of three inputs (what a task_arithmetic build computes per entry) and for one two-source TIES
 * combine (magnitude trim, sign election, normalisation), with the float32 rounding of merge_core's kernels
 * (the bench checks the bits). They are a floor to compare with, not used by the merge code.
 *
 * Built by the bench: cc -O3 -mavx2 -mfma -fopenmp -shared -fPIC floor_kernels.c
 */
#include <immintrin.h>
#include <stdint.h>

#define PREFETCH 1024 /* entries ahead on every input stream: ~20 % faster than the hardware prefetcher alone here */

static inline __m256 load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* float32 -> bf16, round to nearest even, NaN -> 0x7fc0 (ATen's and inductor's conversion) */
static inline void store_bf16(uint16_t *p, __m256 f) {
    __m256i u = _mm256_castps_si256(f);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
    r = _mm256_blendv_epi8(_mm256_set1_epi32(0x7fc0), r, _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_ORD_Q)));
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

static inline void prefetch3(const uint16_t *a, const uint16_t *b, const uint16_t *c, int64_t i) {
    _mm_prefetch((const char *)(a + i + PREFETCH), _MM_HINT_T0);
    _mm_prefetch((const char *)(b + i + PREFETCH), _MM_HINT_T0);
    _mm_prefetch((const char *)(c + i + PREFETCH), _MM_HINT_T0);
}

/* out = fma(x2, c2, fma(x1, c1, x0 * c0)): blend.py's weighted sum; n a multiple of 8 */
void floor_wsum3(const uint16_t *x0, const uint16_t *x1, const uint16_t *x2, int64_t n, float c0, float c1, float c2,
                 uint16_t *out) {
    const __m256 C0 = _mm256_set1_ps(c0), C1 = _mm256_set1_ps(c1), C2 = _mm256_set1_ps(c2);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += 8) {
        prefetch3(x0, x1, x2, i);
        __m256 acc = _mm256_mul_ps(load_bf16(x0 + i), C0);
        acc = _mm256_fmadd_ps(load_bf16(x1 + i), C1, acc);
        store_bf16(out + i, _mm256_fmadd_ps(load_bf16(x2 + i), C2, acc));
    }
}

/* TIES over two sources: a = (|d0| >= t0 ? d0 : 0) * c0, c likewise, s = a + c; the sources whose sign agrees with
 * s's (s = 0 counts as positive) are summed and divided by their weights' sum (1 if none): out = b + num / den.
 * Sign tests use the sign bits: when a and c have different sign bits the winner is the one whose sign bit is s's;
 * otherwise num = s (this also covers zeros: a zero never changes s). n a multiple of 8. */
void floor_ties2(const uint16_t *b, const uint16_t *x0, const uint16_t *x1, int64_t n, float t0, float t1, float c0,
                 float c1, float w0, float w1, float w01, uint16_t *out) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 T0 = _mm256_set1_ps(t0), T1 = _mm256_set1_ps(t1), C0 = _mm256_set1_ps(c0), C1 = _mm256_set1_ps(c1);
    const __m256 W0 = _mm256_set1_ps(w0), W1 = _mm256_set1_ps(w1), W01 = _mm256_set1_ps(w01);
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += 8) {
        prefetch3(b, x0, x1, i);
        __m256 bb = load_bf16(b + i);
        __m256 d0 = _mm256_sub_ps(load_bf16(x0 + i), bb), d1 = _mm256_sub_ps(load_bf16(x1 + i), bb);
        __m256 a = _mm256_mul_ps(_mm256_and_ps(d0, _mm256_cmp_ps(_mm256_and_ps(d0, absmask), T0, _CMP_GE_OQ)), C0);
        __m256 c = _mm256_mul_ps(_mm256_and_ps(d1, _mm256_cmp_ps(_mm256_and_ps(d1, absmask), T1, _CMP_GE_OQ)), C1);
        __m256 s = _mm256_add_ps(a, c);
        __m256 opposite = _mm256_and_ps(_mm256_xor_ps(a, c), _mm256_cmp_ps(s, s, _CMP_ORD_Q)); /* NaN s stays s */
        __m256 c_wins = _mm256_xor_ps(a, s);
        __m256 num = _mm256_blendv_ps(s, _mm256_blendv_ps(a, c, c_wins), opposite);
        __m256 den = _mm256_blendv_ps(W01, _mm256_blendv_ps(W0, W1, c_wins), opposite);
        __m256 a_zero = _mm256_cmp_ps(a, zero, _CMP_EQ_OQ), c_zero = _mm256_cmp_ps(c, zero, _CMP_EQ_OQ);
        den = _mm256_blendv_ps(den, W0, c_zero);
        den = _mm256_blendv_ps(den, _mm256_blendv_ps(W1, one, c_zero), a_zero);
        store_bf16(out + i, _mm256_add_ps(_mm256_div_ps(num, den), bb));
    }
}
