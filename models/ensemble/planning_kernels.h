/* The compiled parts of the ensemble's CPU planning, one extension module (_planning_kernels) from
 * three files: the bfloat16 network (network_kernel.c), a sampling step's work around it
 * (sampling_kernel.c), and whole TSinf rollouts through both with the module's table
 * (planning_kernels.c). What one file calls in another is declared here.
 *
 * Only the kernel functions use AVX-512 (by target attributes), so the module loads on any x86-64
 * CPU; `network_supported` and `sampling_supported` say whether this one runs them.
 */
#ifndef FORETHOUGHT_PLANNING_KERNELS_H
#define FORETHOUGHT_PLANNING_KERNELS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_KERNEL 1
#include <immintrin.h>
#else
#define HAVE_KERNEL 0
#endif

#define UNROLL _Pragma("GCC unroll 16")

/* planning_kernels.c: whether this CPU runs the network (AVX512-BF16) or the sampling step
 * (AVX-512); require_cpu sets Python's error where it does not and returns 0. */
int network_supported(void);
int sampling_supported(void);
int require_cpu(int network);

/* network_kernel.c. plan: 6 int64 a layer (weights, ldw, bias, member stride of the weights in
 * pairs, pairs, columns), as network_kernel.PackedNetwork lays it out. */
/* Member e through `chunks` blocks of `rows` rows: block c's input at h0 + c * in_stride (rows ldh0
 * apart, bfloat16), its output at out + c * out_stride (float32, the last layer's columns wide). */
void network_member(const uint16_t *h0, long ldh0, long in_stride, long chunks, long e, long rows,
                    const int64_t *plan, long layers, uint16_t *scratch, long ldscratch, float *out, long out_stride);
/* Member e's weights and biases on their way to the level-2 cache. */
void network_prefetch(const int64_t *plan, long layers, long e);
PyObject *py_layer(PyObject *self, PyObject *args);
PyObject *py_forward(PyObject *self, PyObject *args);

/* sampling_kernel.c */
/* The network input of S rows (sampling_kernel.c). */
void sampling_features(const float *x, const float *u, long S, long n, long m, const int64_t *plain, long p,
                       const int64_t *angles, long a, const int64_t *action_ref, const float *action_rel,
                       void *features, long ldf, int bf16);
/* The next states of one block of C slots of one member, its draws from element `first` of
 * (key, stream) on (sampling_kernel.c). */
void sampling_block(const float *out, long C, long n, const float *lower, const float *upper, const float *scale,
                    const float *x, float *x_next, uint64_t key, uint64_t stream, long first, float *noise);
PyObject *py_fill(PyObject *self, PyObject *args);
PyObject *py_sample(PyObject *self, PyObject *args);
PyObject *py_features(PyObject *self, PyObject *args);

#endif
