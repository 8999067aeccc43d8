/* nbdkit-qed tests: helpers for the C unit tests of the engine.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_TESTS_TEST_H
#define QED_TESTS_TEST_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qed.h"

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: check failed: %s\n",                     \
               __FILE__, __LINE__, #cond);                              \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
  } while (0)

/* expr returns 0 or a negative errno. */
#define CHECK_OK(expr)                                                  \
  do {                                                                  \
    int r_ = (expr);                                                    \
    if (r_ < 0) {                                                       \
      fprintf (stderr, "%s:%d: %s failed: %s\n",                        \
               __FILE__, __LINE__, #expr, strerror (-r_));              \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
  } while (0)

/* expr must fail with exactly -err. */
#define CHECK_ERR(expr, err)                                            \
  do {                                                                  \
    int r_ = (expr);                                                    \
    if (r_ != -(err)) {                                                 \
      fprintf (stderr, "%s:%d: %s returned %d (%s), expected %s\n",     \
               __FILE__, __LINE__, #expr, r_,                           \
               r_ < 0 ? strerror (-r_) : "success", strerror (err));    \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
  } while (0)

/* Keep the engine's messages; also print them with the test's output. */
void test_capture_log (void);
/* Did a message since the last test_clear_log contain needle? */
bool test_log_contains (const char *needle);
void test_clear_log (void);

/* A new memfile holding a new image (as qemu-img create makes it). */
struct memfile;
struct memfile *test_new_image (uint64_t size, uint32_t cluster_size,
                                uint32_t table_size);

/* Set NEED_CHECK in the image's header, as a crash would leave it. */
void test_set_need_check (struct memfile *mf);

/* The image's tables parsed from the file, not through the engine:
 * fails the test unless the L1 table, every table it points at and
 * every data cluster they point at (past the end of the disk too) is
 * aligned, after the header, wholly inside the file and referenced
 * once.  Returns the number of clusters in use (with the header's).
 */
uint64_t test_check_layout_at (int line, struct memfile *mf);
#define test_check_layout(mf) test_check_layout_at (__LINE__, mf)

/* Open the image in a memfile read-write, or fail the test. */
struct qed_image *test_open_image (struct memfile *mf);

/* A new private directory (removed at exit) and a path inside it. */
const char *test_dir (void);
char *test_path (const char *name);

/* A model of a virtual disk of size bytes: what an image must read. */

/* Write n bytes of a pattern (from seed) to the image and the model. */
void test_model_write (unsigned char *model, struct qed_image *img,
                       uint64_t offset, size_t n, uint64_t seed);

/* The whole image reads as the model, but for [skip, skip + nskip). */
void test_model_check_except_at (int line, const unsigned char *model,
                                 uint64_t size, struct qed_image *img,
                                 uint64_t skip, uint64_t nskip);
#define test_model_check(model, size, img) \
  test_model_check_except_at (__LINE__, model, size, img, 0, 0)
#define test_model_check_except(model, size, img, skip, nskip) \
  test_model_check_except_at (__LINE__, model, size, img, skip, nskip)

/* Deterministic pseudo-random numbers. */
uint64_t test_rand (uint64_t *state);
void test_fill_pattern (void *buf, size_t n, uint64_t seed);

#endif /* QED_TESTS_TEST_H */
