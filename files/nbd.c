/* nbdkit-qed: the NBD file layer: a read-only export reached with libnbd.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Notes on the design
 * -------------------
 * A file is a pool of libnbd handles connected to one URI: up to
 * max_connections when the server advertises multi-conn (its
 * connections then see the same data), else one.  A request takes a
 * handle for itself, uses it without any lock, and gives it back, so
 * requests run in parallel on as many connections as the pool holds
 * and queue for a free one beyond that.  Handles are made on demand:
 * open makes the first (to learn the size and what the server can
 * do), the others come when requests overlap.
 *
 * libnbd 1.14 has no timeouts of its own, so every exchange goes
 * through the asynchronous API (nbd_aio_connect_uri, nbd_aio_pread,
 * nbd_aio_block_status) and nbd_poll with the time left until a
 * deadline: connect_timeout for a connection and its handshake,
 * timeout for one request.  A handle that times out or dies (the
 * server went away) is closed, and so are the idle ones, which went
 * to the same server; the request fails with EIO, naming the URI.
 * The next request connects again, at once; when that fails too,
 * requests fail at once with EIO, without trying, until a delay has
 * passed that starts at RETRY_MIN_MS and doubles with each failed
 * attempt up to RETRY_MAX_MS, so a dead server costs a client at most
 * one connect timeout per delay, never a hang.
 *
 * Locking: lock guards the pool (idle, nidle, nhandles) and the
 * retry state (failures, retry_at); free_handle is signalled when a
 * handle comes back to the pool or a connection attempt ends.  Nothing
 * blocks on the network with lock held: connecting, requests and
 * nbd_close all happen outside it.  uri, size, id, max_request and
 * can_extent are set at open and constant after.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "qed.h"
#include "qed-net.h"
#include "net-module.h"
#include "net-retry.h"

#define DEFAULT_CONNECT_TIMEOUT 10      /* seconds */
#define DEFAULT_TIMEOUT 30              /* seconds */
#define DEFAULT_CONNECTIONS 4
#define MAX_CONNECTIONS 8
/* The largest request sent, unless the server wants smaller ones:
 * the NBD limit most servers keep to.
 */
#define MAX_REQUEST (32 * 1024 * 1024)

struct nbd_file {
  struct qed_file base;         /* first, so a qed_file * converts */
  char *uri;
  uint64_t size;
  uint64_t id[2];
  uint32_t max_request;
  bool can_extent;              /* base:allocation was negotiated */
  int connect_timeout_ms;
  int timeout_ms;
  unsigned max_handles;

  pthread_mutex_t lock;
  pthread_cond_t free_handle;
  struct nbd_handle *idle[MAX_CONNECTIONS];     /* under lock */
  unsigned nidle;                               /* under lock */
  unsigned nhandles;            /* under lock: idle, busy or connecting */
  unsigned failures;            /* under lock: failed connects in a row */
  struct timespec retry_at;     /* under lock: no connect before */
};

/* Run h's state machine until done (h) says stop or the deadline
 * passes: 0, -ETIMEDOUT, or -EIO when the handle failed.
 */
static int
poll_until (struct nbd_handle *h, const struct timespec *deadline,
            int (*done) (struct nbd_handle *h, int64_t cookie),
            int64_t cookie)
{
  int64_t ms;
  int r;

  while ((r = done (h, cookie)) == 0) {
    if ((ms = net_ms_until (deadline)) <= 0)
      return -ETIMEDOUT;
    if (nbd_poll (h, ms > INT32_MAX ? INT32_MAX : (int) ms) == -1)
      return -EIO;
  }
  return r < 0 ? -EIO : 0;
}

/* Whether the handshake is over: 1 ready, -1 failed, 0 not yet. */
static int
connected (struct nbd_handle *h, int64_t unused)
{
  if (nbd_aio_is_ready (h))
    return 1;
  return nbd_aio_is_connecting (h) ? 0 : -1;
}

/* Whether the command finished: 1 done, -1 failed, 0 not yet. */
static int
completed (struct nbd_handle *h, int64_t cookie)
{
  return nbd_aio_command_completed (h, cookie);
}

/* Whether the (canonical, lower-case) URI is nbd+unix or nbds+unix. */
static bool
is_unix (const char *uri)
{
  return strncmp (uri, "nbd+unix:", 9) == 0 ||
    strncmp (uri, "nbds+unix:", 10) == 0;
}

/* A new handle connected to nf->uri, or NULL after logging why. */
static struct nbd_handle *
connect_handle (struct nbd_file *nf)
{
  struct timespec deadline = net_deadline_in (nf->connect_timeout_ms);
  struct nbd_handle *h = nbd_create ();
  int r;

  if (h == NULL) {
    qed_log (QED_LOG_ERROR, "%s: %s", nf->uri, nbd_get_error ());
    return NULL;
  }
  /* Servers that advertise a minimum block size still take the small
   * reads the engine makes (a 64-byte header): let them decide.  The
   * URI's own parameters may name TLS credentials (tls-psk-file,
   * tls-certificates): files on this host.  libnbd is held to the
   * transport and TLS of the scheme that the policy judged (net.c), so
   * that it cannot read the URI otherwise.
   */
  if (nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_set_strict_mode (h, nbd_get_strict_mode (h) &
                           ~LIBNBD_STRICT_ALIGN) == -1 ||
      nbd_set_uri_allow_local_file (h, true) == -1 ||
      nbd_set_uri_allow_transports (h, is_unix (nf->uri)
                                    ? LIBNBD_ALLOW_TRANSPORT_UNIX
                                    : LIBNBD_ALLOW_TRANSPORT_TCP) == -1 ||
      nbd_set_uri_allow_tls (h, strncmp (nf->uri, "nbds", 4) == 0
                             ? LIBNBD_TLS_REQUIRE : LIBNBD_TLS_DISABLE) == -1)
    r = -EIO;
  else if (nbd_aio_connect_uri (h, nf->uri) == -1)
    r = -EIO;
  else
    r = poll_until (h, &deadline, connected, 0);
  if (r == -ETIMEDOUT)
    qed_log (QED_LOG_ERROR, "%s: no connection after %d seconds", nf->uri,
             nf->connect_timeout_ms / 1000);
  else if (r < 0)
    qed_log (QED_LOG_ERROR, "%s: cannot connect: %s", nf->uri,
             nbd_get_error () ? nbd_get_error () : "the handshake failed");
  if (r < 0) {
    nbd_close (h);
    return NULL;
  }
  return h;
}

/* A handle for one request, in *hp: an idle one, a new one, or the
 * first to come back.  -EIO when no connection can be made.
 */
static int
take_handle (struct nbd_file *nf, struct nbd_handle **hp)
{
  struct nbd_handle *h;
  int64_t wait_ms;
  int64_t size;

  pthread_mutex_lock (&nf->lock);
  while (nf->nidle == 0 && nf->nhandles >= nf->max_handles)
    pthread_cond_wait (&nf->free_handle, &nf->lock);
  if (nf->nidle > 0) {
    *hp = nf->idle[--nf->nidle];
    pthread_mutex_unlock (&nf->lock);
    return 0;
  }
  if (nf->failures > 0 && (wait_ms = net_ms_until (&nf->retry_at)) > 0) {
    pthread_mutex_unlock (&nf->lock);
    qed_log (QED_LOG_ERROR, "%s: the server cannot be reached (%u failed"
             " attempts); next attempt in %" PRId64 " ms", nf->uri,
             nf->failures, wait_ms);
    return -EIO;
  }
  nf->nhandles++;
  pthread_mutex_unlock (&nf->lock);

  h = connect_handle (nf);
  /* The export must be the one opened: same size. */
  if (h && (size = nbd_get_size (h)) != (int64_t) nf->size) {
    qed_log (QED_LOG_ERROR, "%s: the export changed size (%" PRIu64
             " bytes when opened, now %" PRId64 ")", nf->uri, nf->size,
             size);
    nbd_close (h);
    h = NULL;
  }

  pthread_mutex_lock (&nf->lock);
  if (h == NULL) {
    nf->nhandles--;
    nf->failures++;
    nf->retry_at = net_deadline_in (net_retry_delay_ms (nf->failures));
    pthread_cond_signal (&nf->free_handle);
  }
  else
    nf->failures = 0;
  pthread_mutex_unlock (&nf->lock);
  *hp = h;
  return h ? 0 : -EIO;
}

/* Give h back after a request; a handle that timed out or is no
 * longer usable is closed (nbd_close does not wait for the server),
 * with the idle ones (same server, likely dead too).
 */
static void
put_handle (struct nbd_file *nf, struct nbd_handle *h, bool timed_out)
{
  struct nbd_handle *stale[MAX_CONNECTIONS];
  unsigned nstale = 0;
  bool ok = !timed_out && nbd_aio_is_ready (h);

  pthread_mutex_lock (&nf->lock);
  if (ok)
    nf->idle[nf->nidle++] = h;
  else {
    stale[nstale++] = h;
    while (nf->nidle > 0)
      stale[nstale++] = nf->idle[--nf->nidle];
    nf->nhandles -= nstale;
  }
  pthread_cond_broadcast (&nf->free_handle);
  pthread_mutex_unlock (&nf->lock);
  for (unsigned i = 0; i < nstale; i++)
    nbd_close (stale[i]);
}

/* Wait for the command cookie (or its failure to start, -1) on h:
 * 0, or -ETIMEDOUT or -EIO after logging what failed.
 */
static int
finish (struct nbd_file *nf, struct nbd_handle *h, int64_t cookie,
        const char *what, size_t count, uint64_t offset)
{
  struct timespec deadline = net_deadline_in (nf->timeout_ms);
  int r = cookie == -1 ? -EIO : poll_until (h, &deadline, completed, cookie);

  if (r == -ETIMEDOUT)
    qed_log (QED_LOG_ERROR, "%s: %s of %zu bytes at offset %" PRIu64
             ": no reply after %d seconds", nf->uri, what, count, offset,
             nf->timeout_ms / 1000);
  else if (r < 0)
    qed_log (QED_LOG_ERROR, "%s: %s of %zu bytes at offset %" PRIu64 ": %s",
             nf->uri, what, count, offset,
             nbd_get_error () ? nbd_get_error () : "failed");
  return r;
}

static int
nbd_file_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct nbd_file *nf = (struct nbd_file *) f;
  struct nbd_handle *h;
  char *p = buf;
  int r;

  if (offset > nf->size || count > nf->size - offset)
    return -EIO;
  if (count == 0)
    return 0;
  if ((r = take_handle (nf, &h)) < 0)
    return r;
  while (r == 0 && count > 0) {
    size_t n = count < nf->max_request ? count : nf->max_request;

    r = finish (nf, h, nbd_aio_pread (h, p, n, offset, NBD_NULL_COMPLETION,
                                      0), "read", n, offset);
    p += n;
    offset += n;
    count -= n;
  }
  put_handle (nf, h, r == -ETIMEDOUT);
  return r < 0 ? -EIO : 0;
}

static int
nbd_file_get_size (struct qed_file *f, uint64_t *size)
{
  *size = ((struct nbd_file *) f)->size;
  return 0;
}

static int
nbd_file_identity (struct qed_file *f, uint64_t id[2])
{
  struct nbd_file *nf = (struct nbd_file *) f;

  id[0] = nf->id[0];
  id[1] = nf->id[1];
  return 0;
}

struct first_extent {
  uint64_t length;
  bool hole;
  bool found;
};

static int
extent_callback (void *opaque, const char *metacontext, uint64_t offset,
                 uint32_t *entries, size_t nr_entries, int *error)
{
  struct first_extent *e = opaque;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 ||
      nr_entries < 2 || e->found)
    return 0;
  e->found = true;
  e->length = entries[0];
  /* Only a hole that reads as zeros is one for the engine: NBD lets a
   * server report unallocated ranges with other contents.
   */
  e->hole = (entries[1] & LIBNBD_STATE_HOLE) &&
    (entries[1] & LIBNBD_STATE_ZERO);
  return 0;
}

static int
nbd_file_extent (struct qed_file *f, uint64_t offset, uint64_t count,
                 uint64_t *length, bool *hole)
{
  struct nbd_file *nf = (struct nbd_file *) f;
  struct first_extent e = { 0 };
  struct nbd_handle *h;
  uint64_t n;
  int r;

  if (!nf->can_extent)
    return -ENOTSUP;            /* taken as data */
  if (offset >= nf->size) {     /* past the end: a hole */
    *hole = true;
    *length = count;
    return 0;
  }
  n = nf->size - offset;
  n = n < count ? n : count;
  n = n < nf->max_request ? n : nf->max_request;
  if ((r = take_handle (nf, &h)) < 0)
    return r;
  r = finish (nf, h,
              nbd_aio_block_status (h, n, offset,
                                    (nbd_extent_callback) {
                                      .callback = extent_callback,
                                      .user_data = &e },
                                    NBD_NULL_COMPLETION,
                                    LIBNBD_CMD_FLAG_REQ_ONE),
              "block status", n, offset);
  put_handle (nf, h, r == -ETIMEDOUT);
  if (r < 0)
    return -EIO;
  if (!e.found || e.length == 0)
    return -EIO;
  *hole = e.hole;
  *length = e.length < n ? e.length : n;
  return 0;
}

static void
nbd_file_close (struct qed_file *f)
{
  struct nbd_file *nf = (struct nbd_file *) f;

  for (unsigned i = 0; i < nf->nidle; i++)
    nbd_close (nf->idle[i]);
  pthread_cond_destroy (&nf->free_handle);
  pthread_mutex_destroy (&nf->lock);
  free (nf->uri);
  free (nf);
}

/* Read-only: no pwrite, flush, truncate, punch or lock.  No prefetch
 * either: there is no host cache to warm.
 */
static const struct qed_file_ops nbd_file_ops = {
  .pread = nbd_file_pread,
  .get_size = nbd_file_get_size,
  .close = nbd_file_close,
  .identity = nbd_file_identity,
  .extent = nbd_file_extent,
};

int
qed_net_module_nbd_open (const char *uri,
                         const struct qed_net_options *options,
                         struct qed_file **filep)
{
  struct nbd_file *nf = calloc (1, sizeof *nf);
  struct nbd_handle *h;
  int64_t size, max;
  unsigned conns = options->max_connections ? options->max_connections
    : DEFAULT_CONNECTIONS;

  if (nf == NULL || (nf->uri = strdup (uri)) == NULL) {
    free (nf);
    return -ENOMEM;
  }
  nf->base.ops = &nbd_file_ops;
  nf->base.writable = 0;
  nf->connect_timeout_ms = 1000 * (options->connect_timeout
                                   ? options->connect_timeout
                                   : DEFAULT_CONNECT_TIMEOUT);
  nf->timeout_ms = 1000 * (options->timeout ? options->timeout
                           : DEFAULT_TIMEOUT);
  net_uri_identity (uri, nf->id);
  pthread_mutex_init (&nf->lock, NULL);
  pthread_cond_init (&nf->free_handle, NULL);

  h = connect_handle (nf);
  if (h == NULL || (size = nbd_get_size (h)) == -1) {
    if (h)
      qed_log (QED_LOG_ERROR, "%s: %s", uri, nbd_get_error ());
    nbd_close (h);
    nbd_file_close (&nf->base);
    return -EIO;
  }
  nf->size = size;
  nf->can_extent =
    nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  max = nbd_get_block_size (h, LIBNBD_SIZE_MAXIMUM);
  nf->max_request = max > 0 && max < MAX_REQUEST ? max : MAX_REQUEST;
  nf->max_handles = nbd_can_multi_conn (h) == 1
    ? (conns < MAX_CONNECTIONS ? conns : MAX_CONNECTIONS) : 1;
  nf->idle[nf->nidle++] = h;
  nf->nhandles = 1;
  *filep = &nf->base;
  return 0;
}
