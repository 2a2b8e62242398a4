/* The ensemble's network on bfloat16 for CPU planning: each layer's product, bias and SiLU in one
 * pass over its output, the layers chained member by member while a member's activations stay in
 * the level-2 cache.
 *
 * A layer out = act(h W + b) takes h (R, K) bfloat16 rows and W as bfloat16 pairs: w[p][j] holds
 * W[2p][j] in its low and W[2p+1][j] in its high 16 bits (the operand of AVX512-BF16's VDPBF16PS,
 * which adds a pair of products to each float32 lane). A tile keeps MR rows x NV*16 columns of
 * float32 sums in registers across all K; the bias is their start and SiLU their epilogue, so the
 * pre-activation is rounded to bfloat16 once, after the activation, not before and after as a
 * product, an activation and a narrowing done apart would. In a network (network_member) each hidden
 * layer's sums come prescaled by -log2(e), which saves the activation a product (PRESCALED_SILU).
 *
 * Python side: network_kernel.py; the module: planning_kernels.h.
 */
#include "planning_kernels.h"

#if HAVE_KERNEL
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#define INLINE static inline __attribute__((always_inline)) TARGET
/* A tile's loops over its rows and vectors are fully unrolled (UNROLL), so that its sums live in
 * registers: left rolled, GCC keeps them in an array on the stack and stores and reloads all of them
 * around the products (a quarter of a narrow layer's time, 5% of a 200-wide one's). */
#endif

#if HAVE_KERNEL

/* x sigmoid(x) = x / (1 + 2^t), t = -x log2(e): 2^t as 2^floor(t) (by scalef, which floors its
 * exponent itself) times a degree-3 polynomial of f = t - floor(t) in [0, 1) (VREDUCEPS; relative
 * error 7.5e-5), over 1 + 2^t by its reciprocal to 2^-14: within 1.4e-4 of SiLU, a fourteenth of
 * bfloat16's half ulp (2^-9), the precision the result is stored in. 9 operations a vector, 6 of
 * them on the multiply pipes the products use (the others overlap them): a tenth of a 200-wide
 * layer's time. Edge cases as torch's SiLU: x = inf gives f = 0 and 2^-inf = 0, so inf; x = -inf
 * gives NaN (inf times the reciprocal of inf, 0); a large negative x gives -0 (x / inf); NaN stays
 * NaN.
 *
 * PRESCALED: x is already t, a sum whose weights and bias were multiplied by -log2(e)
 * (network_kernel.prescaled), and the result t / (1 + 2^t) is -log2(e) SiLU(z): the first product
 * saved, 5 operations on the multiply pipes (1.5% of the network). The next layer's weights take
 * the factor back. */
#define SILU_BODY(V, S, PRESCALED)                                                                                  \
  __m##V t = PRESCALED ? x : S##_mul_ps(x, S##_set1_ps(-1.4426950408889634f));                                      \
  __m##V f = S##_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);                                           \
  __m##V p = S##_fmadd_ps(S##_set1_ps(0.07802452f), f, S##_set1_ps(0.22606716f));                                   \
  p = S##_fmadd_ps(p, f, S##_set1_ps(0.69583354f));                                                                 \
  p = S##_fmadd_ps(p, f, S##_set1_ps(0.99992522f));                                                                 \
  return S##_mul_ps(x, S##_rcp14_ps(S##_add_ps(S##_scalef_ps(p, t), S##_set1_ps(1.0f))));

INLINE __m512 silu16(__m512 x) { SILU_BODY(512, _mm512, 0) }
INLINE __m256 silu8(__m256 x) { SILU_BODY(256, _mm256, 0) }
INLINE __m512 prescaled_silu16(__m512 x) { SILU_BODY(512, _mm512, 1) }
INLINE __m256 prescaled_silu8(__m256 x) { SILU_BODY(256, _mm256, 1) }

/* The activation: none (0), SiLU (SILU), SiLU of a prescaled sum (PRESCALED_SILU). */
enum { SILU = 1, PRESCALED_SILU = 2 };
#define ACT16(act, x) ((act) == PRESCALED_SILU ? prescaled_silu16(x) : (act) == SILU ? silu16(x) : (x))
#define ACT8(act, x) ((act) == PRESCALED_SILU ? prescaled_silu8(x) : (act) == SILU ? silu8(x) : (x))

/* Two bfloat16 values as one 32-bit word, read without breaking C's aliasing rules (a broadcast load). */
INLINE int32_t pair_at(const uint16_t *at) {
  int32_t word;
  memcpy(&word, at, sizeof word);
  return word;
}

/* One layer's operands and where its output goes. */
typedef struct {
  const uint16_t *h; /* (R, 2 * pairs) bfloat16 bits, rows ldh apart */
  long ldh;
  const uint32_t *w; /* (pairs, ldw) bfloat16 pairs, ldw a multiple of 16 (zero columns past N) */
  long ldw;
  const float *bias; /* (ldw,) */
  void *out;         /* (R, N) bfloat16 bits or float32, rows ldo apart */
  long ldo;
  long pairs;
  int act; /* 0, SILU or PRESCALED_SILU */
  int f32;
} Layer;

/* Rows r0.. r0+MR, columns j.. j+16*NV, all 16 wide (mask: the last vector's columns to store). */
#define DEF_TILE16(MR, NV)                                                                                          \
  static TARGET void tile16_##MR##_##NV(const Layer *L, long r0, long j, __mmask16 last) {                          \
    __m512 acc[MR][NV];                                                                                             \
    UNROLL for (int v = 0; v < NV; v++) {                                                                           \
      __m512 b = _mm512_loadu_ps(L->bias + j + 16 * v);                                                             \
      UNROLL for (int r = 0; r < MR; r++) acc[r][v] = b;                                                            \
    }                                                                                                               \
    const uint16_t *h = L->h + r0 * L->ldh;                                                                         \
    const uint32_t *w = L->w + j;                                                                                   \
    for (long p = 0; p < L->pairs; p++) {                                                                           \
      __m512bh b[NV];                                                                                               \
      UNROLL for (int v = 0; v < NV; v++) b[v] = (__m512bh)_mm512_loadu_si512(w + p * L->ldw + 16 * v);             \
      UNROLL for (int r = 0; r < MR; r++) {                                                                         \
        __m512bh a = (__m512bh)_mm512_set1_epi32(pair_at(h + r * L->ldh + 2 * p));                                  \
        UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);                       \
      }                                                                                                             \
    }                                                                                                               \
    UNROLL for (int r = 0; r < MR; r++) {                                                                           \
      long at = (r0 + r) * L->ldo + j;                                                                              \
      __m512 x[NV];                                                                                                 \
      UNROLL for (int v = 0; v < NV; v++) x[v] = ACT16(L->act, acc[r][v]);                                           \
      if (L->f32) {                                                                                                 \
        UNROLL for (int v = 0; v < NV - 1; v++) _mm512_storeu_ps((float *)L->out + at + 16 * v, x[v]);              \
        _mm512_mask_storeu_ps((float *)L->out + at + 16 * (NV - 1), last, x[NV - 1]);                               \
      } else if (NV % 2 == 0 && last == (__mmask16)0xFFFF) {                                                        \
        /* two vectors narrowed by one instruction into 32 bfloat16 */                                              \
        UNROLL for (int v = 0; v < NV; v += 2)                                                                      \
          _mm512_storeu_si512((uint16_t *)L->out + at + 16 * v,                                                     \
                              (__m512i)_mm512_cvtne2ps_pbh(x[(v + 1) % NV], x[v]));                                 \
      } else {                                                                                                      \
        UNROLL for (int v = 0; v < NV; v++)                                                                         \
          _mm256_mask_storeu_epi16((uint16_t *)L->out + at + 16 * v, v == NV - 1 ? last : (__mmask16)0xFFFF,        \
                                   (__m256i)_mm512_cvtneps_pbh(x[v]));                                              \
      }                                                                                                             \
    }                                                                                                               \
  }

/* Rows r0.. r0+MR, columns j.. j+8 (mask: the columns to store), in 256-bit registers. */
#define DEF_TILE8(MR)                                                                                               \
  static TARGET void tile8_##MR(const Layer *L, long r0, long j, __mmask8 last) {                                   \
    __m256 acc[MR];                                                                                                 \
    __m256 b0 = _mm256_loadu_ps(L->bias + j);                                                                       \
    UNROLL for (int r = 0; r < MR; r++) acc[r] = b0;                                                                \
    const uint16_t *h = L->h + r0 * L->ldh;                                                                         \
    const uint32_t *w = L->w + j;                                                                                   \
    for (long p = 0; p < L->pairs; p++) {                                                                           \
      __m256bh b = (__m256bh)_mm256_loadu_si256((const __m256i *)(w + p * L->ldw));                                 \
      UNROLL for (int r = 0; r < MR; r++) {                                                                         \
        __m256bh a = (__m256bh)_mm256_set1_epi32(pair_at(h + r * L->ldh + 2 * p));                                  \
        acc[r] = _mm256_dpbf16_ps(acc[r], a, b);                                                                    \
      }                                                                                                             \
    }                                                                                                               \
    UNROLL for (int r = 0; r < MR; r++) {                                                                           \
      __m256 x = ACT8(L->act, acc[r]);                                                                               \
      long at = (r0 + r) * L->ldo + j;                                                                              \
      if (L->f32)                                                                                                   \
        _mm256_mask_storeu_ps((float *)L->out + at, last, x);                                                       \
      else                                                                                                          \
        _mm_mask_storeu_epi16((uint16_t *)L->out + at, last, (__m128i)_mm256_cvtneps_pbh(x));                       \
    }                                                                                                               \
  }

/* Main tiles: 6 rows x 64 columns (24 sums, 4 weight vectors and a broadcast in 32 registers,
 * the fastest of 8x48, 6x64, 4x96 and 12x32 here); the last columns 16 or 8 at a time. */
#define MAIN_ROWS 6
#define NARROW_ROWS 12
DEF_TILE16(1, 4) DEF_TILE16(2, 4) DEF_TILE16(3, 4) DEF_TILE16(4, 4) DEF_TILE16(5, 4) DEF_TILE16(6, 4)
DEF_TILE16(1, 1) DEF_TILE16(2, 1) DEF_TILE16(3, 1) DEF_TILE16(4, 1) DEF_TILE16(5, 1) DEF_TILE16(6, 1)
DEF_TILE8(1) DEF_TILE8(2) DEF_TILE8(3) DEF_TILE8(4) DEF_TILE8(5) DEF_TILE8(6)
DEF_TILE8(7) DEF_TILE8(8) DEF_TILE8(9) DEF_TILE8(10) DEF_TILE8(11) DEF_TILE8(12)

typedef void (*Tile16)(const Layer *, long, long, __mmask16);
typedef void (*Tile8)(const Layer *, long, long, __mmask8);
static const Tile16 WIDE[MAIN_ROWS + 1] = {0, tile16_1_4, tile16_2_4, tile16_3_4, tile16_4_4, tile16_5_4, tile16_6_4};
static const Tile16 ONE[MAIN_ROWS + 1] = {0, tile16_1_1, tile16_2_1, tile16_3_1, tile16_4_1, tile16_5_1, tile16_6_1};
static const Tile8 HALF[NARROW_ROWS + 1] = {0, tile8_1, tile8_2, tile8_3, tile8_4, tile8_5, tile8_6,
                                            tile8_7, tile8_8, tile8_9, tile8_10, tile8_11, tile8_12};

/* out (R, N) = act(h W + b). A column block runs over all rows before the next, so its weights
 * (pairs x 64 x 4 bytes, 51 kB at K = 200) stay near while the rows stream past. */
static TARGET void run_layer(const Layer *L, long R, long N) {
  long j = 0;
  for (; j + 64 <= N; j += 64)
    for (long r = 0; r < R; r += MAIN_ROWS) {
      long mr = R - r < MAIN_ROWS ? R - r : MAIN_ROWS;
      WIDE[mr](L, r, j, (__mmask16)0xFFFF);
    }
  for (; N - j > 8; j += 16) {
    __mmask16 last = N - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - j)) - 1);
    for (long r = 0; r < R; r += MAIN_ROWS) {
      long mr = R - r < MAIN_ROWS ? R - r : MAIN_ROWS;
      ONE[mr](L, r, j, last);
    }
  }
  if (j < N) {
    __mmask8 last = (__mmask8)((1u << (N - j)) - 1);
    for (long r = 0; r < R; r += NARROW_ROWS) {
      long mr = R - r < NARROW_ROWS ? R - r : NARROW_ROWS;
      HALF[mr](L, r, j, last);
    }
  }
}

/* Member e's weights and biases on their way to the level-2 cache, issued while the member before it
 * runs: read from memory as its first chunk needs them, they stall it (a twentieth of a step at a
 * chunk a member). */
void network_prefetch(const int64_t *plan, long layers, long e) {
  for (long l = 0; l < layers; l++) {
    const int64_t *q = plan + 6 * l;
    const char *w = (const char *)((const uint32_t *)q[0] + e * q[3]), *b = (const char *)((const float *)q[2] + e * q[1]);
    for (long at = 0; at < q[3] * 4; at += 64) _mm_prefetch(w + at, _MM_HINT_T1);
    for (long at = 0; at < q[1] * 4; at += 64) _mm_prefetch(b + at, _MM_HINT_T1);
  }
}

void network_member(const uint16_t *h0, long ldh0, long in_stride, long chunks, long e, long rows,
                    const int64_t *plan, long layers, uint16_t *scratch, long ldscratch, float *out, long out_stride) {
  for (long c = 0; c < chunks; c++) {
    const uint16_t *h = h0 + c * in_stride;
    long ldh = ldh0;
    for (long l = 0; l < layers; l++) {
      const int64_t *q = plan + 6 * l;
      int last = l == layers - 1;
      uint16_t *buffer = scratch + (l % 2) * rows * ldscratch;
      long columns = q[5];
      Layer L = {h, ldh, (const uint32_t *)q[0] + e * q[3], q[1], (const float *)q[2] + e * q[1],
                 last ? (void *)(out + c * out_stride) : (void *)buffer, last ? columns : ldscratch, q[4], last ? 0 : PRESCALED_SILU, last};
      run_layer(&L, rows, columns);
      if (!last && columns % 2) /* an odd width: the next layer's last pair reads a zero */
        for (long r = 0; r < rows; r++) buffer[r * ldscratch + columns] = 0;
      h = buffer;
      ldh = ldscratch;
    }
  }
}

#endif

/* layer(h, ldh, w, ldw, bias, out, ldo, rows, pairs, columns, act, f32): one layer (act 0, SILU or
 * PRESCALED_SILU), addresses as integers; the Python side (network_kernel.py) owns the shapes and checks them. */
PyObject *py_layer(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long h, w, bias, out;
  long ldh, ldw, ldo, rows, pairs, columns;
  int act, f32;
  if (!PyArg_ParseTuple(args, "KlKlKKllllii", &h, &ldh, &w, &ldw, &bias, &out, &ldo, &rows, &pairs, &columns,
                        &act, &f32))
    return NULL;
  if (!require_cpu(1)) return NULL;
#if HAVE_KERNEL
  Layer L = {(const uint16_t *)h, ldh, (const uint32_t *)w, ldw, (const float *)bias, (void *)out, ldo, pairs,
             act, f32};
  Py_BEGIN_ALLOW_THREADS
  run_layer(&L, rows, columns);
  Py_END_ALLOW_THREADS
#endif
  Py_RETURN_NONE;
}

/* forward(h0, chunks, members, rows, plan, layers, scratch, ldscratch, out): the whole network on
 * chunks x members blocks of `rows` rows. plan: the address of the layers' int64 plan
 * (planning_kernels.h); the first layer's input h0 (chunks, members, rows, 2 * pairs0) bfloat16,
 * the hidden layers (SiLU) ping-ponging through scratch (2, rows, ldscratch) bfloat16, the last (no
 * activation) into out (chunks, members, rows, columns) float32. Member by member, each through
 * every chunk: a member's weights (170 kB at 200 wide) are read into the level-2 cache once a call,
 * not once a chunk. */
PyObject *py_forward(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long h0, plan_at, scratch, out;
  long chunks, members, rows, layers, ldscratch;
  if (!PyArg_ParseTuple(args, "KlllKlKlK", &h0, &chunks, &members, &rows, &plan_at, &layers, &scratch, &ldscratch,
                        &out))
    return NULL;
  if (!require_cpu(1)) return NULL;
#if HAVE_KERNEL
  const int64_t *plan = (const int64_t *)plan_at;
  long ldh0 = 2 * plan[4], columns_out = plan[6 * (layers - 1) + 5];
  Py_BEGIN_ALLOW_THREADS
  for (long e = 0; e < members; e++) {
    if (e + 1 < members) network_prefetch(plan, layers, e + 1);
    network_member((const uint16_t *)h0 + e * rows * ldh0, ldh0, members * rows * ldh0, chunks, e, rows, plan, layers,
                   (uint16_t *)scratch, ldscratch, (float *)out + e * rows * columns_out, members * rows * columns_out);
  }
  Py_END_ALLOW_THREADS
#endif
  Py_RETURN_NONE;
}
