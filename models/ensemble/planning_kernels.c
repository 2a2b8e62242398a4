/* Whole TSinf rollouts through the compiled network and sampling step, and the module's table
 * (planning_kernels.h).
 *
 * Under TSinf a particle keeps its member for the whole rollout, so the rollout can go member by
 * member, each through every step: its weights (170 kB at 200 wide) stay in the level-2 cache for
 * the H steps, instead of all members' (850 kB, more than the cache with the activations) passing
 * through it every step, and no Python runs between the kernels. The draws are counter-based, so
 * the order changes nothing: the states are those of the step-by-step loop, bit for bit.
 */
#include "planning_kernels.h"

/* What this CPU runs, asked once: the sampling step AVX-512 (F, DQ, BW, VL) with FMA, the network
 * AVX512-BF16 besides. */
int sampling_supported(void) {
  static int cached = -1;
  if (cached < 0) {
#if HAVE_KERNEL
    __builtin_cpu_init();
    cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#else
    cached = 0;
#endif
  }
  return cached;
}

int network_supported(void) {
  static int cached = -1;
  if (cached < 0) {
#if HAVE_KERNEL
    cached = sampling_supported() && __builtin_cpu_supports("avx512bf16");
#else
    cached = 0;
#endif
  }
  return cached;
}

int require_cpu(int network) {
  if (network ? network_supported() : sampling_supported()) return 1;
  PyErr_SetString(PyExc_RuntimeError, network ? "this CPU lacks AVX512-BF16" : "this CPU lacks AVX-512");
  return 0;
}

static PyObject *py_network_supported(PyObject *self, PyObject *args) {
  (void)self; (void)args;
  return PyBool_FromLong(network_supported());
}

static PyObject *py_sampling_supported(PyObject *self, PyObject *args) {
  (void)self; (void)args;
  return PyBool_FromLong(sampling_supported());
}

#if HAVE_KERNEL
/* Member e's rows on their way to the level-2 cache, issued during the member before it: their start
 * states and actions, which its slots are dealt, and their whole rows of states, which it writes
 * back. The rows are scattered through X and U, and read cold each took a miss: a twentieth of
 * an iCEM plan's time outside the network. Not analysed across calls (noipa): GCC counts a prefetch
 * no effect, and would drop the call. */
__attribute__((noipa)) static void deal_prefetch(const float *X, const float *U, const int64_t *order,
                                                  const int64_t *inverse, long chunks, long members, long rows,
                                                  long e, long steps, long n, long m) {
  for (long c = 0; c < chunks; c++)
    for (long s = (c * members + e) * rows; s < (c * members + e + 1) * rows; s++) {
      const char *x = (const char *)(X + order[s] * (steps + 1) * n);
      const char *u = (const char *)(U + order[s] * steps * m);
      for (long at = 0; at < (steps + 1) * n * 4; at += 64) _mm_prefetch(x + at, _MM_HINT_T1);
      _mm_prefetch(x + (steps + 1) * n * 4 - 1, _MM_HINT_T1);
      for (long at = 0; at < steps * m * 4; at += 64) _mm_prefetch(u + at, _MM_HINT_T1);
      _mm_prefetch(u + steps * m * 4 - 1, _MM_HINT_T1);
      _mm_prefetch((const char *)(inverse + order[s]), _MM_HINT_T1);
    }
}
#endif

/* rollout(slots, actions, steps, chunks, members, rows, n, m, plan, layers, scratch, ldscratch, features,
 *         ldf, out, plain, p, angles, a, action_ref, action_rel, lower, upper, scale, key, noise):
 * slots (steps + 1, chunks * members * rows, n) float32 with step 0 set, the rest written; actions
 * (steps, chunks * members * rows, m) float32; slot block c * members + e of member e. The network's
 * plan, layers and scratch (2, rows, ldscratch) as forward's (network_kernel.c); features (chunks,
 * rows, ldf) bfloat16 and out (chunks, rows, 2n) float32 one member's scratch; the layout and the
 * bounds (members, n) as sampling_kernel.c's; noise a scratch of rows * n floats. Step t's draws are
 * stream t of key. With X (B, steps + 1, n) and U (B, steps, m) float32 rows, order (S,) and
 * inverse (B,) int64 (X = 0: none), each member's slots are dealt their start states and actions
 * from the rows before its steps (order: the row in each slot), and its rows' states written back
 * to X after them (inverse: the slot a row takes), while they are in cache. */
static PyObject *py_rollout(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long slots_at, actions_at, plan_at, scratch, features, out, plain, angles, action_ref, action_rel,
      lower, upper, scale, key, noise, X_at, U_at, order_at, inverse_at;
  long steps, chunks, members, rows, n, m, layers, ldscratch, ldf, p, a, B;
  if (!PyArg_ParseTuple(args, "KKllllllKlKlKlKKlKlKKKKKKKKKKKl", &slots_at, &actions_at, &steps, &chunks, &members,
                        &rows, &n, &m, &plan_at, &layers, &scratch, &ldscratch, &features, &ldf, &out, &plain, &p,
                        &angles, &a, &action_ref, &action_rel, &lower, &upper, &scale, &key, &noise, &X_at, &U_at,
                        &order_at, &inverse_at, &B))
    return NULL;
  if (!require_cpu(1)) return NULL; /* the network's needs include the sampling step's */
#if HAVE_KERNEL
  const int64_t *plan = (const int64_t *)plan_at;
  long S = chunks * members * rows, width = 2 * n;
  float *slots = (float *)slots_at, *X = (float *)X_at;
  float *actions = (float *)actions_at;
  const float *U = (const float *)U_at;
  const int64_t *order = (const int64_t *)order_at, *inverse = (const int64_t *)inverse_at;
  if (X) { /* every slot's row and every row's slot in range, before any is used */
    for (long s = 0; s < S; s++)
      if (order[s] < 0 || order[s] >= B)
        return PyErr_Format(PyExc_ValueError, "order[%ld] = %ld is not a row of %ld", s, (long)order[s], B);
    for (long b = 0; b < B; b++)
      if (inverse[b] < 0 || inverse[b] >= S || order[inverse[b]] != b)
        return PyErr_Format(PyExc_ValueError, "inverse[%ld] = %ld is not the slot of row %ld", b, (long)inverse[b], b);
  }
  Py_BEGIN_ALLOW_THREADS
  for (long e = 0; e < members; e++) {
    if (e + 1 < members) network_prefetch(plan, layers, e + 1);
    if (X) /* this member's slots: their rows' start states and actions */
      for (long c = 0; c < chunks; c++)
        for (long s = (c * members + e) * rows; s < (c * members + e + 1) * rows; s++) {
          const float *x0 = X + order[s] * (steps + 1) * n, *u = U + order[s] * steps * m;
          for (long i = 0; i < n; i++) slots[s * n + i] = x0[i];
          for (long t = 0; t < steps; t++)
            for (long i = 0; i < m; i++) actions[(t * S + s) * m + i] = u[t * m + i];
        }
    for (long t = 0; t < steps; t++) {
      if (X && t == steps - 1 && e + 1 < members)
        deal_prefetch(X, U, order, inverse, chunks, members, rows, e + 1, steps, n, m);
      const float *x = slots + t * S * n, *u = actions + t * S * m;
      float *x_next = slots + (t + 1) * S * n;
      for (long c = 0; c < chunks; c++) {
        long first = (c * members + e) * rows; /* this block's first slot */
        sampling_features(x + first * n, u + first * m, rows, n, m, (const int64_t *)plain, p, (const int64_t *)angles,
                          a, (const int64_t *)action_ref, (const float *)action_rel,
                          (uint16_t *)features + c * rows * ldf, ldf, 1);
      }
      network_member((const uint16_t *)features, ldf, rows * ldf, chunks, e, rows, plan, layers, (uint16_t *)scratch,
                     ldscratch, (float *)out, rows * width);
      for (long c = 0; c < chunks; c++) {
        long first = (c * members + e) * rows;
        sampling_block((const float *)out + c * rows * width, rows, n, (const float *)lower + e * n,
                       (const float *)upper + e * n, (const float *)scale, x + first * n, x_next + first * n, key,
                       (uint64_t)t, first * n, (float *)noise);
      }
    }
    if (X) /* its rows' states back, from its slots (a padding slot repeats a row that has its own) */
      for (long c = 0; c < chunks; c++)
        for (long s = (c * members + e) * rows; s < (c * members + e + 1) * rows; s++) {
          if (inverse[order[s]] != s) continue;
          float *x = X + order[s] * (steps + 1) * n;
          for (long t = 1; t <= steps; t++)
            for (long i = 0; i < n; i++) x[t * n + i] = slots[(t * S + s) * n + i];
        }
  }
  Py_END_ALLOW_THREADS
#endif
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"network_supported", py_network_supported, METH_NOARGS, "Whether this CPU runs the network (AVX512-BF16)."},
    {"layer", py_layer, METH_VARARGS, "One layer act(h W + b) on raw addresses (network_kernel.py)."},
    {"forward", py_forward, METH_VARARGS, "The whole network on chunks of rows, member by member (network_kernel.py)."},
    {"sampling_supported", py_sampling_supported, METH_NOARGS, "Whether this CPU runs the sampling step (AVX-512)."},
    {"fill", py_fill, METH_VARARGS, "Standard normals of (key, stream) at a raw address (sampling_kernel.py)."},
    {"sample", py_sample, METH_VARARGS, "Next states from the network's output (sampling_kernel.py)."},
    {"features", py_features, METH_VARARGS, "The network's input rows (sampling_kernel.py)."},
    {"rollout", py_rollout, METH_VARARGS, "Whole TSinf rollouts, member by member (sampling_kernel.py)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_planning_kernels",
                                    "The ensemble's CPU planning on AVX-512 (planning_kernels.h).", -1, methods};

PyMODINIT_FUNC PyInit__planning_kernels(void) { return PyModule_Create(&module); }
