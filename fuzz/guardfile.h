/* nbdkit-qed fuzzers: a file layer that watches the engine.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Wraps another qed_file (a memfile) and aborts -- which the fuzzer
 * reports as a crash -- when the engine does something it never may:
 * - read past the end of the file (every offset it reads was validated
 *   against the file size, so this means a check was missed);
 * - write, truncate or punch through a read-only open;
 * - write into the header area other than the 64-byte header itself
 *   (the header area is at least 4 KiB in every valid image).
 * Writes that would grow the file past a budget fail with ENOSPC, so
 * that a hostile image cannot make a fuzzer run out of memory; the
 * engine must cope with that like with a full disk.
 *
 * Closing the guard closes the file under it and frees the guard.
 */

#ifndef QED_FUZZ_GUARDFILE_H
#define QED_FUZZ_GUARDFILE_H

#include <stdbool.h>
#include <stdint.h>

#include "qed-file.h"

struct guard_options {
  bool read_only;               /* abort on any change */
  uint64_t max_size;            /* budget for the file size; 0: none */
};

struct qed_file *guard_new (struct qed_file *inner,
                            const struct guard_options *opts);

/* Counts, for harnesses that want to look at them. */
uint64_t guard_enospc_count (struct qed_file *f);

#endif /* QED_FUZZ_GUARDFILE_H */
