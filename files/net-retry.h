/* nbdkit-qed: deadlines, retry delays and identities for the network
 * file layers (files/net-retry.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_NET_RETRY_H
#define QED_NET_RETRY_H

#include <stdint.h>
#include <time.h>

/* The delay before a server that failed is tried again starts at
 * RETRY_MIN_MS and doubles with each failure in a row up to
 * RETRY_MAX_MS.
 */
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 4000

/* The CLOCK_MONOTONIC time ms milliseconds from now. */
struct timespec net_deadline_in (int ms);

/* Milliseconds until t (a CLOCK_MONOTONIC time), rounded up; 0 or
 * less when it has passed.
 */
int64_t net_ms_until (const struct timespec *t);

/* The delay after failures (at least 1) failures in a row. */
int net_retry_delay_ms (unsigned failures);

/* The identity of the file at uri (qed_file's identity): two FNV-1a
 * hashes of it, the same for two opens of one URI.
 */
void net_uri_identity (const char *uri, uint64_t id[2]);

#endif /* QED_NET_RETRY_H */
