/* A trajectory-sampling step's work around the network on AVX-512, for CPU planning: the normal
 * draws, the next states sampled from the network's output, and the next step's input features.
 * The same arithmetic as the numba passes of sampling_step.py, operation for operation in float32
 * (built with -ffp-contract=off, so that no product and sum fuse where numba's do not), so the two
 * agree bit for bit; here a step's rows go sixteen lanes at a time, and the draws never leave the
 * level-1 cache.
 *
 * Draws: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
 * counter-based generator of cuRAND and JAX, through Box-Muller, sixteen pairs a vector. A draw is
 * a pure function of (key, stream, index): the planner takes the 64-bit key from its torch
 * generator once a rollout and numbers the steps as streams, so a rollout's draws are reproducible
 * from the generator and every step's are independent of every other's.
 *
 * Python side: sampling_kernel.py; the module: planning_kernels.h.
 */
#include "planning_kernels.h"

#if HAVE_KERNEL
#define TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define INLINE static inline __attribute__((always_inline)) TARGET
#endif

#if HAVE_KERNEL

/* fdlibm's float32 kernels for sin and cos on [-pi/4, pi/4], used by the draws and the features. */
#define SIN3 (-1.6666654611e-1f)
#define SIN5 8.3321608736e-3f
#define SIN7 (-1.9515295891e-4f)
#define COS4 4.166664568298827e-2f
#define COS6 (-1.388731625493765e-3f)
#define COS8 2.443315711809948e-5f

/* Philox4x32-10 on eight counters at once, one in each 64-bit lane's low half (the products
 * 32 x 32 -> 64 bits are VPMULUDQ's). The high halves carry junk between rounds: VPMULUDQ reads only
 * the low halves, and the words are masked once at the end. */
INLINE void philox8(__m512i c[4], uint32_t key0, uint32_t key1) {
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53), m1 = _mm512_set1_epi64(0xCD9E8D57);
  __m512i k0 = _mm512_set1_epi64(key0), k1 = _mm512_set1_epi64(key1);
  const __m512i w0 = _mm512_set1_epi64(0x9E3779B9), w1 = _mm512_set1_epi64(0xBB67AE85);
  for (int round = 0; round < 10; round++) {
    __m512i p0 = _mm512_mul_epu32(c[0], m0), p1 = _mm512_mul_epu32(c[2], m1);
    __m512i x0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c[1], k0, 0x96); /* hi1 ^ c1 ^ k0 */
    __m512i x2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c[3], k1, 0x96); /* hi0 ^ c3 ^ k1 */
    c[0] = x0, c[1] = p1, c[2] = x2, c[3] = p0;
    k0 = _mm512_add_epi64(k0, w0), k1 = _mm512_add_epi64(k1, w1); /* the low halves wrap as 32 bits */
  }
}

/* Uniform in (0, 1] from a word's top 24 bits: never 0 (its log); the largest word rounds to 1, a
 * zero radius, one draw in 2^24. */
INLINE __m512 open_unit(__m512i bits) {
  return _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bits, 8)), _mm512_set1_ps(0.5f)),
                       _mm512_set1_ps(0x1p-24f));
}

/* ln u for u in (0, 1): u = m 2^e, m in [0.75, 1.5), ln m = 2 atanh(s), s = (m - 1) / (m + 1) in
 * [-1/7, 1/5], by its series to s^9 (error under 2e-9). */
INLINE __m512 log_unit(__m512 u) {
  __m512 m = _mm512_getmant_ps(u, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_src);
  __m512 e = _mm512_getexp_ps(_mm512_mul_ps(u, _mm512_set1_ps(4.0f / 3.0f)));
  __m512 s = _mm512_div_ps(_mm512_sub_ps(m, _mm512_set1_ps(1.0f)), _mm512_add_ps(m, _mm512_set1_ps(1.0f)));
  __m512 s2 = _mm512_mul_ps(s, s);
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 9.0f), s2, _mm512_set1_ps(1.0f / 7.0f));
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(1.0f / 5.0f));
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(1.0f / 3.0f));
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(1.0f));
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.6931471805599453f), _mm512_mul_ps(_mm512_add_ps(s, s), q));
}

/* Thirty-two standard normals from 32 words: radius sqrt(-2 ln u) from the first 16, and an angle
 * psi uniform in [0, pi/2) with two sign bits from the other 16 (a quadrant chosen by the signs and
 * an angle uniform within it: an angle uniform on the circle). cos and sin of psi as those of
 * phi +- pi/4, phi in [-pi/4, pi/4), by the polynomials of fdlibm's kernels (float32: within 1e-7). */
INLINE void box_muller(__m512i radius_bits, __m512i angle_bits, float *out) {
  __m512 r = _mm512_sqrt_ps(_mm512_mul_ps(log_unit(open_unit(radius_bits)), _mm512_set1_ps(-2.0f)));
  __m512 phi = _mm512_mul_ps(_mm512_sub_ps(open_unit(angle_bits), _mm512_set1_ps(0.5f)),
                             _mm512_set1_ps(1.5707963267948966f));
  __m512 p2 = _mm512_mul_ps(phi, phi);
  __m512 sp = _mm512_fmadd_ps(_mm512_set1_ps(SIN7), p2, _mm512_set1_ps(SIN5));
  sp = _mm512_fmadd_ps(sp, p2, _mm512_set1_ps(SIN3));
  sp = _mm512_fmadd_ps(_mm512_mul_ps(sp, p2), phi, phi);
  __m512 cp = _mm512_fmadd_ps(_mm512_set1_ps(COS8), p2, _mm512_set1_ps(COS6));
  cp = _mm512_fmadd_ps(cp, p2, _mm512_set1_ps(COS4));
  cp = _mm512_fmadd_ps(cp, p2, _mm512_set1_ps(-0.5f));
  cp = _mm512_fmadd_ps(cp, p2, _mm512_set1_ps(1.0f));
  /* cos(phi + pi/4) = (c - s) / sqrt 2, sin(phi + pi/4) = (c + s) / sqrt 2 */
  __m512 scale = _mm512_mul_ps(r, _mm512_set1_ps(0.7071067811865476f));
  __m512 z0 = _mm512_mul_ps(scale, _mm512_sub_ps(cp, sp));
  __m512 z1 = _mm512_mul_ps(scale, _mm512_add_ps(cp, sp));
  const __m512i sign = _mm512_set1_epi32((int)0x80000000);
  z0 = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(z0), _mm512_and_si512(_mm512_slli_epi32(angle_bits, 31), sign)));
  z1 = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(z1), _mm512_and_si512(_mm512_slli_epi32(angle_bits, 30), sign)));
  _mm512_storeu_ps(out, z0);
  _mm512_storeu_ps(out + 16, z1);
}

/* out[0 .. count) = the normals of (key, stream) from index `start` on: block b holds normals 32b
 * to 32b + 31, from the counters (8b + lane, stream low, stream high, 0) of the eight lanes. */
static TARGET void fill_normals(float *out, long start, long count, uint64_t key, uint64_t stream) {
  const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  /* the low halves of c0 and c1 of each lane, then of c2 and c3, as 16 words each */
  const __m512i lows = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i s_lo = _mm512_set1_epi64((uint32_t)stream), s_hi = _mm512_set1_epi64((uint32_t)(stream >> 32));
  for (long at = start - start % 32; at < start + count; at += 32) {
    __m512i c[4] = {_mm512_add_epi64(_mm512_set1_epi64(at / 4), lanes), s_lo, s_hi, _mm512_setzero_si512()};
    philox8(c, (uint32_t)key, (uint32_t)(key >> 32));
    __m512i radius_bits = _mm512_permutex2var_epi32(c[0], lows, c[1]);
    __m512i angle_bits = _mm512_permutex2var_epi32(c[2], lows, c[3]);
    long from = at < start ? start : at, to = at + 32 < start + count ? at + 32 : start + count;
    if (from == at && to == at + 32) {
      box_muller(radius_bits, angle_bits, out + (at - start));
    } else {
      float block[32];
      box_muller(radius_bits, angle_bits, block);
      memcpy(out + (from - start), block + (from - at), (size_t)(to - from) * sizeof(float));
    }
  }
}

/* The bounds' and the exp's chains of dependent operations are long (a softplus is some 50):
 * WAYS vectors go through each operation side by side, so that the core overlaps their chains. */
#define WAYS 4
#define EACH(i) UNROLL for (int i = 0; i < WAYS; i++)

/* y = e^x as sampling_step._exp: x = k ln 2 + r, e^r by its Taylor polynomial to r^7, 2^k written
 * into the exponent bits (2^(k-1) doubled for k = 128); 0 below -87.3, inf above 89, NaN for NaN. */
INLINE void exp_ways(__m512 y[WAYS], const __m512 x[WAYS]) {
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  static const float taylor[7] = {(float)(1.0 / 720.0), (float)(1.0 / 120.0), (float)(1.0 / 24.0), (float)(1.0 / 6.0),
                                  0.5f, 1.0f, 1.0f};
  __m512 k[WAYS], r[WAYS], p[WAYS];
  __mmask16 top[WAYS];
  EACH(i) k[i] = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x[i], _mm512_set1_ps(1.4426950408889634f)), magic), magic);
  EACH(i) r[i] = _mm512_sub_ps(_mm512_sub_ps(x[i], _mm512_mul_ps(k[i], _mm512_set1_ps(0.693145751953125f))),
                               _mm512_mul_ps(k[i], _mm512_set1_ps(1.428606765330187e-06f)));
  EACH(i) p[i] = _mm512_set1_ps((float)(1.0 / 5040.0));
  UNROLL for (int j = 0; j < 7; j++) EACH(i) p[i] = _mm512_add_ps(_mm512_mul_ps(p[i], r[i]), _mm512_set1_ps(taylor[j]));
  EACH(i) top[i] = _mm512_cmp_ps_mask(k[i], _mm512_set1_ps(127.0f), _CMP_GT_OQ);
  EACH(i) k[i] = _mm512_mask_sub_ps(k[i], top[i], k[i], _mm512_set1_ps(1.0f));
  EACH(i) {
    __m512i e = _mm512_add_epi32(_mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(k[i], magic)),
                                                  _mm512_castps_si512(magic)), _mm512_set1_epi32(127));
    __m512 v = _mm512_mul_ps(p[i], _mm512_castsi512_ps(_mm512_slli_epi32(e, 23)));
    v = _mm512_mask_add_ps(v, top[i], v, v);
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(x[i], _mm512_set1_ps(89.0f), _CMP_GT_OQ), _mm512_set1_ps(__builtin_inff()));
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(x[i], _mm512_set1_ps(-87.3f), _CMP_LT_OQ), _mm512_setzero_ps());
    y[i] = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(x[i], x[i], _CMP_UNORD_Q), x[i]);
  }
}

/* y = log(1 + e^z) as sampling_step._softplus: max(z, 0) + 2 atanh(s), s = u / (2 + u), u = e^-|z|. */
INLINE void softplus_ways(__m512 y[WAYS], const __m512 z[WAYS]) {
  static const float series[7] = {(float)(1.0 / 13.0), (float)(1.0 / 11.0), (float)(1.0 / 9.0), (float)(1.0 / 7.0),
                                  (float)(1.0 / 5.0), (float)(1.0 / 3.0), 1.0f};
  __m512 u[WAYS], s[WAYS], s2[WAYS], q[WAYS];
  EACH(i) u[i] = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(z[i]), _mm512_set1_epi32((int)0x80000000)));
  exp_ways(u, u);
  EACH(i) s[i] = _mm512_div_ps(u[i], _mm512_add_ps(_mm512_set1_ps(2.0f), u[i]));
  EACH(i) s2[i] = _mm512_mul_ps(s[i], s[i]);
  EACH(i) q[i] = _mm512_set1_ps((float)(1.0 / 15.0));
  UNROLL for (int j = 0; j < 7; j++) EACH(i) q[i] = _mm512_add_ps(_mm512_mul_ps(q[i], s2[i]), _mm512_set1_ps(series[j]));
  /* max(z, 0) as Python's: z where z is NaN or not below 0 (VMAXPS returns its second operand) */
  EACH(i) y[i] = _mm512_add_ps(_mm512_max_ps(_mm512_setzero_ps(), z[i]),
                               _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(2.0f), s[i]), q[i]));
}

/* The lanes `index` picks from the first `count` <= 32 floats at o (two masked loads: nothing past
 * them is read): a group of rows' deltas or log-variances, one per lane. */
INLINE __m512 output_lanes(const float *o, long count, __m512i index) {
  uint32_t read = count >= 32 ? 0xFFFFFFFFu : (1u << count) - 1;
  return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps((__mmask16)read, o), index,
                                _mm512_maskz_loadu_ps((__mmask16)(read >> 16), o + 16));
}

/* Rows a block at most in `sampling_block`'s passes: their vectors' scratch stays in the level-1 cache. */
#define PASS_VECTORS 64

/* x_next = x + delta + exp(log std) * noise for one block of C slots of one member, as
 * sampling_step.sample_next_states, noise the normals of (key, stream) from element `first` on.
 * out (C, 2n) float32: delta, then the raw log-variance; lower, upper, scale (n,); x, x_next (C, n);
 * noise: scratch for C * n floats. n <= 16. A group of g = 16 / n rows fills a vector. The bounds
 * and the exp go in three short passes over up to PASS_VECTORS vectors, as the numba version's
 * three loops: one long loop's body falls out of the core's decoded-operation cache (a third
 * slower). */
TARGET void sampling_block(const float *out, long C, long n, const float *lower, const float *upper,
                           const float *scale, const float *x, float *x_next, uint64_t key, uint64_t stream,
                           long first, float *noise) {
  long g = 16 / n, lanes = g * n;
  int32_t delta_at[16] = {0}, column[16] = {0};
  for (long j = 0; j < lanes; j++) delta_at[j] = (int32_t)((j / n) * 2 * n + j % n), column[j] = (int32_t)(j % n);
  const __m512i delta_index = _mm512_loadu_si512(delta_at), cols = _mm512_loadu_si512(column);
  const __m512i logvar_index = _mm512_add_epi32(delta_index, _mm512_set1_epi32((int)n));
  const __mmask16 row_mask = (__mmask16)((1u << n) - 1);
  const __m512 log_std_scale = _mm512_permutexvar_ps(cols, _mm512_maskz_loadu_ps(row_mask, scale));
  const __m512 hi = _mm512_permutexvar_ps(cols, _mm512_maskz_loadu_ps(row_mask, upper));
  const __m512 lo = _mm512_permutexvar_ps(cols, _mm512_maskz_loadu_ps(row_mask, lower));
  __m512 std[PASS_VECTORS + WAYS];
  fill_normals(noise, first, C * n, key, stream);
  for (long p0 = 0; p0 < C; p0 += PASS_VECTORS * g) { /* rows p0 .. p0 + PASS_VECTORS g */
    long vectors = (C - p0 + g - 1) / g < PASS_VECTORS ? (C - p0 + g - 1) / g : PASS_VECTORS;
    for (long v = 0; v < vectors; v++) { /* the log-variances */
      long rows = C - p0 - v * g < g ? C - p0 - v * g : g;
      std[v] = output_lanes(out + (p0 + v * g) * 2 * n, rows * 2 * n, logvar_index);
    }
    for (long v = vectors; v < vectors + WAYS; v++) std[v] = _mm512_setzero_ps();
    for (long v = 0; v < vectors; v += WAYS) {
      __m512 t[WAYS];
      EACH(i) t[i] = _mm512_sub_ps(hi, std[v + i]);
      softplus_ways(t, t);
      EACH(i) std[v + i] = _mm512_sub_ps(hi, t[i]);
    }
    for (long v = 0; v < vectors; v += WAYS) {
      __m512 t[WAYS];
      EACH(i) t[i] = _mm512_sub_ps(std[v + i], lo);
      softplus_ways(t, t);
      EACH(i) std[v + i] = _mm512_add_ps(lo, t[i]);
    }
    for (long v = 0; v < vectors; v += WAYS) {
      __m512 t[WAYS];
      EACH(i) t[i] = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), std[v + i]), log_std_scale);
      exp_ways(t, t);
      EACH(i) std[v + i] = t[i];
    }
    for (long v = 0; v < vectors; v++) {
      long r = p0 + v * g, rows = C - r < g ? C - r : g;
      __mmask16 m = (__mmask16)((1u << (rows * n)) - 1);
      __m512 delta = output_lanes(out + r * 2 * n, rows * 2 * n, delta_index);
      __m512 step = _mm512_add_ps(delta, _mm512_mul_ps(std[v], _mm512_maskz_loadu_ps(m, noise + r * n)));
      _mm512_mask_storeu_ps(x_next + r * n, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + r * n), step));
    }
  }
}

/* sin and cos as sampling_step._sincos: x = k pi/2 + r, |r| <= pi/4 (held to [-1, 1]), the quadrant
 * k mod 4 choosing and signing fdlibm's polynomials. */
INLINE void sincos16(__m512 x, __m512 *sin, __m512 *cos) {
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  __m512 k = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.6366197723675814f)), magic), magic);
  __m512 r = _mm512_sub_ps(_mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(k, _mm512_set1_ps(1.5703125f))),
                                         _mm512_mul_ps(k, _mm512_set1_ps(4.8375129699707031e-04f))),
                           _mm512_mul_ps(k, _mm512_set1_ps(7.5497899548918822e-08f)));
  r = _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_set1_ps(-1.0f), r)); /* NaN passes */
  __m512 r2 = _mm512_mul_ps(r, r);
  __m512 s = _mm512_add_ps(_mm512_set1_ps(SIN5), _mm512_mul_ps(r2, _mm512_set1_ps(SIN7)));
  s = _mm512_add_ps(_mm512_set1_ps(SIN3), _mm512_mul_ps(r2, s));
  s = _mm512_add_ps(r, _mm512_mul_ps(_mm512_mul_ps(r, r2), s));
  __m512 c = _mm512_add_ps(_mm512_set1_ps(COS6), _mm512_mul_ps(r2, _mm512_set1_ps(COS8)));
  c = _mm512_add_ps(_mm512_set1_ps(COS4), _mm512_mul_ps(r2, c));
  c = _mm512_add_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_mul_ps(_mm512_set1_ps(0.5f), r2)),
                    _mm512_mul_ps(_mm512_mul_ps(r2, r2), c));
  __m512i quadrant = _mm512_and_si512(_mm512_castps_si512(_mm512_add_ps(k, magic)), _mm512_set1_epi32(3));
  __mmask16 odd = _mm512_test_epi32_mask(quadrant, _mm512_set1_epi32(1));
  __mmask16 sin_negative = _mm512_test_epi32_mask(quadrant, _mm512_set1_epi32(2));
  __mmask16 cos_negative = _mm512_test_epi32_mask(_mm512_add_epi32(quadrant, _mm512_set1_epi32(1)), _mm512_set1_epi32(2));
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32((int)0x80000000));
  __m512 sn = _mm512_mask_mov_ps(s, odd, c), cs = _mm512_mask_mov_ps(c, odd, s);
  *sin = _mm512_mask_xor_ps(sn, sin_negative, sn, sign);
  *cos = _mm512_mask_xor_ps(cs, cos_negative, cs, sign);
}

/* bfloat16 bits of float32 lanes rounded to nearest even, NaN as torch's quiet NaN (bfloat16_bits.narrow). */
INLINE __m256i narrow16(__m512 x) {
  __m512i bits = _mm512_castps_si512(x);
  __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), odd), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

/* The network input of each of S rows, as sampling_step.write_features: (plain states, sin and cos
 * of the angles, actions less action_rel times their reference state, 1), then zeros to the row's
 * end. x (S, n), u (S, m) float32; features (S, ldf) bfloat16 bits (bf16) or float32, p + 2a + m + 1
 * <= ldf <= 16. g = 16 / max(ldf, n, m) rows fill a vector, WAYS vectors side by side. */
TARGET void sampling_features(const float *x, const float *u, long S, long n, long m, const int64_t *plain, long p,
                              const int64_t *angles, long a, const int64_t *action_ref, const float *action_rel,
                              void *features, long ldf, int bf16) {
  long width = p + 2 * a + m + 1, widest = ldf > n ? (ldf > m ? ldf : m) : (n > m ? n : m), g = 16 / widest;
  int32_t source[16] = {0}, reference[16] = {0};
  float relative[16] = {0};
  __mmask16 sin_lanes = 0, cos_lanes = 0, one_lanes = 0, written = 0;
  for (long r = 0; r < g; r++) {
    long o = r * ldf; /* this row's first lane */
    for (long i = 0; i < p; i++) source[o + i] = (int32_t)(r * n + plain[i]);
    for (long i = 0; i < a; i++) {
      source[o + p + i] = source[o + p + a + i] = (int32_t)(r * n + angles[i]);
      sin_lanes |= (__mmask16)(1u << (o + p + i)), cos_lanes |= (__mmask16)(1u << (o + p + a + i));
    }
    for (long i = 0; i < m; i++) { /* the second table: the action rows */
      source[o + p + 2 * a + i] = (int32_t)(16 + r * m + i);
      reference[o + p + 2 * a + i] = (int32_t)(r * n + action_ref[i]);
      relative[o + p + 2 * a + i] = action_rel[i];
    }
    one_lanes |= (__mmask16)(1u << (o + width - 1));
    written |= (__mmask16)(((1u << width) - 1) << o);
  }
  const __m512i src = _mm512_loadu_si512(source), ref = _mm512_loadu_si512(reference);
  const __m512 rel = _mm512_loadu_ps(relative);
  /* u - rel * x_ref where the action is relative, u itself (as numba: no subtraction) elsewhere */
  const __mmask16 subtract = _mm512_cmp_ps_mask(rel, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  for (long s0 = 0; s0 < S; s0 += WAYS * g) {
    __m512 v[WAYS], sn[WAYS], cs[WAYS];
    long rows[WAYS];
    EACH(i) {
      long s = s0 + i * g;
      rows[i] = S - s < g ? (S - s > 0 ? S - s : 0) : g;
      __m512 xs = _mm512_maskz_loadu_ps((__mmask16)((1u << (rows[i] * n)) - 1), x + (rows[i] ? s : 0) * n);
      __m512 us = _mm512_maskz_loadu_ps((__mmask16)((1u << (rows[i] * m)) - 1), u + (rows[i] ? s : 0) * m);
      v[i] = _mm512_permutex2var_ps(xs, src, us);
      if (subtract) v[i] = _mm512_mask_sub_ps(v[i], subtract, v[i], _mm512_mul_ps(rel, _mm512_permutexvar_ps(ref, xs)));
    }
    if (a) {
      EACH(i) sincos16(v[i], &sn[i], &cs[i]);
      EACH(i) v[i] = _mm512_mask_mov_ps(_mm512_mask_mov_ps(v[i], sin_lanes, sn[i]), cos_lanes, cs[i]);
    }
    EACH(i) {
      if (!rows[i]) continue;
      __m512 row = _mm512_maskz_mov_ps(written, _mm512_mask_mov_ps(v[i], one_lanes, _mm512_set1_ps(1.0f)));
      __mmask16 store = (__mmask16)((1u << (rows[i] * ldf)) - 1);
      long s = s0 + i * g;
      if (bf16)
        _mm256_mask_storeu_epi16((uint16_t *)features + s * ldf, store, narrow16(row));
      else
        _mm512_mask_storeu_ps((float *)features + s * ldf, store, row);
    }
  }
}

#endif

/* The functions take addresses as integers; the Python side (sampling_kernel.py) owns the shapes
 * and checks them. */

/* fill(out, start, count, key, stream): the normals start .. start + count of (key, stream). */
PyObject *py_fill(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long out, key, stream;
  long start, count;
  if (!PyArg_ParseTuple(args, "KllKK", &out, &start, &count, &key, &stream)) return NULL;
  if (!require_cpu(0)) return NULL;
#if HAVE_KERNEL
  Py_BEGIN_ALLOW_THREADS
  fill_normals((float *)out, start, count, key, stream);
  Py_END_ALLOW_THREADS
#endif
  Py_RETURN_NONE;
}

/* sample(out, blocks, rows, n, members, lower, upper, scale, x, x_next, key, stream, noise): blocks
 * of `rows` slots, block b of member b % members, its draws from element b * rows * n of (key,
 * stream) on; noise a scratch of rows * n floats. */
PyObject *py_sample(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long out, lower, upper, scale, x, x_next, key, stream, noise;
  long blocks, rows, n, members;
  if (!PyArg_ParseTuple(args, "KllllKKKKKKKK", &out, &blocks, &rows, &n, &members, &lower, &upper, &scale, &x,
                        &x_next, &key, &stream, &noise))
    return NULL;
  if (!require_cpu(0)) return NULL;
#if HAVE_KERNEL
  Py_BEGIN_ALLOW_THREADS
  for (long b = 0; b < blocks; b++) { /* block b: member b % members */
    long e = b % members;
    sampling_block((const float *)out + b * rows * 2 * n, rows, n, (const float *)lower + e * n,
                   (const float *)upper + e * n, (const float *)scale, (const float *)x + b * rows * n,
                   (float *)x_next + b * rows * n, key, stream, b * rows * n, (float *)noise);
  }
  Py_END_ALLOW_THREADS
#endif
  Py_RETURN_NONE;
}

/* features(x, u, rows, n, m, plain, p, angles, a, action_ref, action_rel, out, ldf, bf16) */
PyObject *py_features(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long x, u, plain, angles, action_ref, action_rel, out;
  long rows, n, m, p, a, ldf;
  int bf16;
  if (!PyArg_ParseTuple(args, "KKlllKlKlKKKli", &x, &u, &rows, &n, &m, &plain, &p, &angles, &a, &action_ref,
                        &action_rel, &out, &ldf, &bf16))
    return NULL;
  if (!require_cpu(0)) return NULL;
#if HAVE_KERNEL
  Py_BEGIN_ALLOW_THREADS
  sampling_features((const float *)x, (const float *)u, rows, n, m, (const int64_t *)plain, p, (const int64_t *)angles, a,
             (const int64_t *)action_ref, (const float *)action_rel, (void *)out, ldf, bf16);
  Py_END_ALLOW_THREADS
#endif
  Py_RETURN_NONE;
}

