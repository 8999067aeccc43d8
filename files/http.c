/* nbdkit-qed: the HTTP file layer: a file on a web server, read with
 * Range requests through libcurl.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Notes on the design
 * -------------------
 * Each read is one GET of "Range: bytes=FIRST-LAST", which must come
 * back as 206 Partial Content with a Content-Range naming exactly
 * those bytes and exactly that many bytes of body; anything else
 * fails the read with EIO and a message naming the URL (and the HTTP
 * status).  open learns the size from the Content-Range of a GET of
 * byte 0, and so also that the server serves byte ranges: a server
 * that answers with the whole file (200) is refused, after its first
 * bytes, not its whole body.
 *
 * A file is a pool of curl easy handles for one URL, made on demand
 * up to max_connections; a read takes one for itself, uses it without
 * any lock and gives it back, so reads run in parallel on as many
 * connections as the pool holds and queue beyond that.  Each handle
 * keeps its connection open for the next read, and connects again by
 * itself when the server closed it.
 *
 * A read that fails below HTTP (no connection, a reset, a timeout)
 * fails with EIO, and so do the reads after it, at once and without
 * asking the server, until a delay has passed that starts at
 * RETRY_MIN_MS and doubles with each such failure in a row up to
 * RETRY_MAX_MS; the first read after the delay tries the server
 * again, and one that succeeds ends the delays.  A dead server thus
 * sees a request per delay at most, and a client never waits more
 * than a connect timeout for its EIO.  An HTTP error status (404, 500)
 * is an answer, not an outage: it fails that read only.
 *
 * HTTPS verifies the server's certificate and name, against the
 * system's CA store unless the environment names others, as the curl
 * command reads it (libcurl itself does not): CURL_CA_BUNDLE (a PEM
 * file), else SSL_CERT_DIR (a hashed directory), else SSL_CERT_FILE.
 * Redirects are followed to https, and to http only from an http URL
 * (never down from https), each only when the protocol list of the
 * options allows it: a server cannot send us to a file:// or any
 * other scheme, nor to plain HTTP when only HTTPS is allowed.
 *
 * Locking: lock guards the pool (idle, nidle, nhandles) and the retry
 * state (failures, retry_at); free_handle is signalled when a handle
 * comes back or a new one could not be made.  Nothing touches the
 * network with lock held.  A handle is used by one thread at a time,
 * the one that took it.  Everything else in struct http_file is set at
 * open and constant after.
 */

#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "qed.h"
#include "qed-net.h"
#include "net-module.h"
#include "net-retry.h"

#define DEFAULT_CONNECT_TIMEOUT 10      /* seconds */
#define DEFAULT_TIMEOUT 30              /* seconds */
#define DEFAULT_CONNECTIONS 4
#define MAX_CONNECTIONS 8
#define MAX_REDIRECTS 10

/* An easy handle and the buffer where it explains its failures. */
struct conn {
  CURL *curl;
  char error[CURL_ERROR_SIZE];
};

struct http_file {
  struct qed_file base;         /* first, so a qed_file * converts */
  char *url;
  uint64_t size;
  uint64_t id[2];
  long connect_timeout;         /* seconds */
  long timeout;                 /* seconds */
  const char *redirect_protocols;       /* NULL: follow none */
  char *ca_file;                /* from the environment, or NULL */
  char *ca_dir;
  unsigned max_handles;

  pthread_mutex_t lock;
  pthread_cond_t free_handle;
  struct conn *idle[MAX_CONNECTIONS];   /* under lock */
  unsigned nidle;                       /* under lock */
  unsigned nhandles;            /* under lock: idle, busy or being made */
  unsigned failures;            /* under lock: failed requests in a row */
  struct timespec retry_at;     /* under lock: no request before */
};

/* What came back for one request.  Headers of every response in a
 * redirect chain pass through; a status line starts the record again,
 * so what is left is the last response's.
 */
struct reply {
  unsigned char *buf;           /* the body goes here */
  size_t want;                  /* at most this many bytes of it */
  size_t got;
  bool too_long;                /* the body was longer than want */
  bool has_range;               /* a Content-Range header was seen */
  bool range_unsatisfied;       /* it was "bytes * / TOTAL" */
  bool total_known;             /* TOTAL was not "*" */
  uint64_t first, last, total;  /* from Content-Range */
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_init_result;

/* libcurl's process-wide state, made once and never torn down: other
 * users of libcurl in the process may still need it.
 */
static void
global_init (void)
{
  global_init_result = curl_global_init (CURL_GLOBAL_DEFAULT);
}

static size_t
body_callback (char *data, size_t size, size_t nmemb, void *opaque)
{
  struct reply *rep = opaque;
  size_t n = size * nmemb;

  if (n > rep->want - rep->got) {
    rep->too_long = true;
    return 0;                   /* stops the transfer */
  }
  memcpy (rep->buf + rep->got, data, n);
  rep->got += n;
  return n;
}

/* Content-Range: "bytes FIRST-LAST/TOTAL" or "bytes * / TOTAL" (without
 * the spaces), where TOTAL may be "*".
 */
static void
parse_content_range (struct reply *rep, const char *v)
{
  char *end;

  while (*v == ' ' || *v == '\t')
    v++;
  if (strncasecmp (v, "bytes ", 6) != 0)
    return;
  v += 6;
  if (*v == '*') {
    rep->range_unsatisfied = true;
    v++;
  }
  else {
    if (!isdigit ((unsigned char) *v))
      return;
    rep->first = strtoull (v, &end, 10);
    if (*end != '-' || !isdigit ((unsigned char) end[1]))
      return;
    rep->last = strtoull (end + 1, &end, 10);
    v = end;
  }
  if (*v != '/')
    return;
  v++;
  if (isdigit ((unsigned char) *v)) {
    rep->total = strtoull (v, &end, 10);
    rep->total_known = true;
  }
  else if (*v != '*')
    return;
  rep->has_range = true;
}

static size_t
header_callback (char *data, size_t size, size_t nmemb, void *opaque)
{
  struct reply *rep = opaque;
  size_t n = size * nmemb;
  static const char name[] = "content-range:";
  char line[256];

  if (n >= 5 && strncmp (data, "HTTP/", 5) == 0) {
    rep->has_range = rep->range_unsatisfied = rep->total_known = false;
    return n;
  }
  if (n < sizeof name - 1 || n >= sizeof line ||
      strncasecmp (data, name, sizeof name - 1) != 0)
    return n;
  memcpy (line, data + sizeof name - 1, n - (sizeof name - 1));
  line[n - (sizeof name - 1)] = '\0';
  parse_content_range (rep, line);
  return n;
}

/* Which protocols a redirect from url may lead to (a list for
 * CURLOPT_REDIR_PROTOCOLS_STR), or NULL for none.
 */
static const char *
redirect_protocols (const char *url, unsigned allowed)
{
  bool https = allowed & QED_PROTO_HTTPS;
  bool http = (allowed & QED_PROTO_HTTP) && strncasecmp (url, "http:", 5) == 0;

  return https && http ? "http,https" : https ? "https" : http ? "http" : NULL;
}

/* A new handle for hf->url, or NULL after logging why. */
static struct conn *
new_conn (struct http_file *hf)
{
  struct conn *c = calloc (1, sizeof *c);
  CURLcode r;

  if (c == NULL || (c->curl = curl_easy_init ()) == NULL) {
    qed_log (QED_LOG_ERROR, "%s: cannot make a curl handle", hf->url);
    free (c);
    return NULL;
  }
#define SET(opt, val) \
  if ((r = curl_easy_setopt (c->curl, opt, val)) != CURLE_OK) goto fail
  SET (CURLOPT_ERRORBUFFER, c->error);
  SET (CURLOPT_URL, hf->url);
  SET (CURLOPT_PROTOCOLS_STR, "http,https");
  if (hf->redirect_protocols) {
    SET (CURLOPT_FOLLOWLOCATION, 1L);
    SET (CURLOPT_REDIR_PROTOCOLS_STR, hf->redirect_protocols);
    SET (CURLOPT_MAXREDIRS, (long) MAX_REDIRECTS);
  }
  /* Timeouts without signals: handles run in many threads. */
  SET (CURLOPT_NOSIGNAL, 1L);
  SET (CURLOPT_CONNECTTIMEOUT, hf->connect_timeout);
  SET (CURLOPT_TIMEOUT, hf->timeout);
  SET (CURLOPT_SSL_VERIFYPEER, 1L);
  SET (CURLOPT_SSL_VERIFYHOST, 2L);
  if (hf->ca_file)
    SET (CURLOPT_CAINFO, hf->ca_file);
  if (hf->ca_dir)
    SET (CURLOPT_CAPATH, hf->ca_dir);
  SET (CURLOPT_USERAGENT, PACKAGE_NAME "/" PACKAGE_VERSION);
  SET (CURLOPT_WRITEFUNCTION, body_callback);
  SET (CURLOPT_HEADERFUNCTION, header_callback);
#undef SET
  return c;

 fail:
  qed_log (QED_LOG_ERROR, "%s: cannot set up a curl handle: %s", hf->url,
           curl_easy_strerror (r));
  curl_easy_cleanup (c->curl);
  free (c);
  return NULL;
}

static void
free_conn (struct conn *c)
{
  curl_easy_cleanup (c->curl);
  free (c);
}

/* A handle for one request: an idle one, a new one, or the first to
 * come back.  -EIO while the server is given time after failures, or
 * when no handle can be made.
 */
static int
take_conn (struct http_file *hf, struct conn **cp)
{
  int64_t wait_ms;
  struct conn *c;

  pthread_mutex_lock (&hf->lock);
  if (hf->failures > 0 && (wait_ms = net_ms_until (&hf->retry_at)) > 0) {
    unsigned failures = hf->failures;

    pthread_mutex_unlock (&hf->lock);
    qed_log (QED_LOG_ERROR, "%s: the server cannot be reached (%u failed"
             " requests in a row); next attempt in %" PRId64 " ms", hf->url,
             failures, wait_ms);
    return -EIO;
  }
  while (hf->nidle == 0 && hf->nhandles >= hf->max_handles)
    pthread_cond_wait (&hf->free_handle, &hf->lock);
  if (hf->nidle > 0) {
    *cp = hf->idle[--hf->nidle];
    pthread_mutex_unlock (&hf->lock);
    return 0;
  }
  hf->nhandles++;
  pthread_mutex_unlock (&hf->lock);

  c = new_conn (hf);
  if (c == NULL) {
    pthread_mutex_lock (&hf->lock);
    hf->nhandles--;
    pthread_cond_signal (&hf->free_handle);
    pthread_mutex_unlock (&hf->lock);
    return -EIO;
  }
  *cp = c;
  return 0;
}

/* Give c back, counting whether its request reached the server. */
static void
put_conn (struct http_file *hf, struct conn *c, bool reached)
{
  pthread_mutex_lock (&hf->lock);
  hf->idle[hf->nidle++] = c;
  if (reached)
    hf->failures = 0;
  else {
    hf->failures++;
    hf->retry_at = net_deadline_in (net_retry_delay_ms (hf->failures));
  }
  pthread_cond_signal (&hf->free_handle);
  pthread_mutex_unlock (&hf->lock);
}

/* GET bytes [first, last] into rep on c: 0 with *status, or -EIO after
 * logging why (what names the request in the message).
 */
static int
get_range (struct http_file *hf, struct conn *c, uint64_t first,
           uint64_t last, struct reply *rep, long *status, const char *what)
{
  char range[64];
  CURLcode r;

  snprintf (range, sizeof range, "%" PRIu64 "-%" PRIu64, first, last);
  c->error[0] = '\0';
  if ((r = curl_easy_setopt (c->curl, CURLOPT_RANGE, range)) != CURLE_OK ||
      (r = curl_easy_setopt (c->curl, CURLOPT_WRITEDATA, rep)) != CURLE_OK ||
      (r = curl_easy_setopt (c->curl, CURLOPT_HEADERDATA, rep)) != CURLE_OK) {
    qed_log (QED_LOG_ERROR, "%s: %s: %s", hf->url, what,
             curl_easy_strerror (r));
    return -EIO;
  }
  r = curl_easy_perform (c->curl);
  curl_easy_getinfo (c->curl, CURLINFO_RESPONSE_CODE, status);
  if (r == CURLE_OK || (r == CURLE_WRITE_ERROR && rep->too_long))
    return 0;
  qed_log (QED_LOG_ERROR, "%s: %s: %s", hf->url, what,
           c->error[0] ? c->error : curl_easy_strerror (r));
  return -EIO;
}

static int
http_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct http_file *hf = (struct http_file *) f;
  struct reply rep = { .buf = buf, .want = count };
  uint64_t last = offset + count - 1;
  char what[96];
  struct conn *c;
  long status = 0;
  int r;

  if (offset > hf->size || count > hf->size - offset) {
    qed_log (QED_LOG_ERROR, "%s: read of %zu bytes at offset %" PRIu64
             " is past the end of the file (%" PRIu64 " bytes)", hf->url,
             count, offset, hf->size);
    return -EIO;
  }
  if (count == 0)
    return 0;
  snprintf (what, sizeof what, "read of %zu bytes at offset %" PRIu64,
            count, offset);
  if ((r = take_conn (hf, &c)) < 0)
    return r;
  r = get_range (hf, c, offset, last, &rep, &status, what);
  put_conn (hf, c, r == 0);
  if (r < 0)
    return r;

  if (status != 206)
    qed_log (QED_LOG_ERROR, "%s: %s: HTTP status %ld%s", hf->url, what,
             status, status == 200 ? " (the server ignored the range)" : "");
  else if (!rep.has_range || rep.range_unsatisfied ||
           rep.first != offset || rep.last != last)
    qed_log (QED_LOG_ERROR, "%s: %s: the reply is not for bytes %" PRIu64
             "-%" PRIu64 " (Content-Range: %s)", hf->url, what, offset,
             last, rep.has_range ? "other bytes" : "none");
  else if (rep.total_known && rep.total != hf->size)
    qed_log (QED_LOG_ERROR, "%s: %s: the file changed size (%" PRIu64
             " bytes when opened, now %" PRIu64 ")", hf->url, what, hf->size,
             rep.total);
  else if (rep.too_long || rep.got != count)
    qed_log (QED_LOG_ERROR, "%s: %s: the server sent %s bytes than asked"
             " (%zu)", hf->url, what, rep.too_long ? "more" : "fewer",
             rep.got);
  else
    return 0;
  return -EIO;
}

static int
http_get_size (struct qed_file *f, uint64_t *size)
{
  *size = ((struct http_file *) f)->size;
  return 0;
}

static int
http_identity (struct qed_file *f, uint64_t id[2])
{
  struct http_file *hf = (struct http_file *) f;

  id[0] = hf->id[0];
  id[1] = hf->id[1];
  return 0;
}

static void
http_close (struct qed_file *f)
{
  struct http_file *hf = (struct http_file *) f;

  for (unsigned i = 0; i < hf->nidle; i++)
    free_conn (hf->idle[i]);
  pthread_cond_destroy (&hf->free_handle);
  pthread_mutex_destroy (&hf->lock);
  free (hf->ca_file);
  free (hf->ca_dir);
  free (hf->url);
  free (hf);
}

/* Read-only: no pwrite, flush, truncate, punch or lock.  No extent:
 * HTTP cannot say where a file has holes, so it is all data.  No
 * prefetch: there is no host cache to warm.
 */
static const struct qed_file_ops http_ops = {
  .pread = http_pread,
  .get_size = http_get_size,
  .close = http_close,
  .identity = http_identity,
};

/* The CA certificates the environment names, as the curl command
 * reads them.
 */
static int
ca_from_environment (struct http_file *hf)
{
  const char *bundle = getenv ("CURL_CA_BUNDLE");
  const char *dir = getenv ("SSL_CERT_DIR");
  const char *file = getenv ("SSL_CERT_FILE");

  if (bundle && *bundle)
    hf->ca_file = strdup (bundle);
  else if (dir && *dir)
    hf->ca_dir = strdup (dir);
  else if (file && *file)
    hf->ca_file = strdup (file);
  else
    return 0;
  return hf->ca_file || hf->ca_dir ? 0 : -ENOMEM;
}

/* Learn the size from a GET of byte 0, which only a server that
 * serves byte ranges answers with 206 (and an empty file with 416).
 */
static int
probe (struct http_file *hf, struct conn *c)
{
  unsigned char byte;
  struct reply rep = { .buf = &byte, .want = 1 };
  long status = 0;
  int r;

  if ((r = get_range (hf, c, 0, 0, &rep, &status, "cannot open")) < 0)
    return r;
  if (status == 200) {
    qed_log (QED_LOG_ERROR, "%s: the server does not serve byte ranges"
             " (it answered a Range request with the whole file, HTTP"
             " status 200): it cannot be a backing file", hf->url);
    return -ENOTSUP;
  }
  if (status == 416 && rep.has_range && rep.range_unsatisfied &&
      rep.total_known && rep.total == 0) {
    hf->size = 0;
    return 0;
  }
  if (status != 206) {
    qed_log (QED_LOG_ERROR, "%s: cannot open: HTTP status %ld", hf->url,
             status);
    return -EIO;
  }
  if (!rep.has_range || rep.range_unsatisfied || rep.first != 0 ||
      rep.last != 0 || rep.got != 1) {
    qed_log (QED_LOG_ERROR, "%s: cannot open: the server answered a Range"
             " request for byte 0 with other bytes", hf->url);
    return -EIO;
  }
  if (!rep.total_known) {
    qed_log (QED_LOG_ERROR, "%s: cannot open: the server does not say the"
             " size of the file (Content-Range: bytes 0-0/*)", hf->url);
    return -EIO;
  }
  hf->size = rep.total;
  return 0;
}

int
qed_net_module_http_open (const char *url,
                          const struct qed_net_options *options,
                          struct qed_file **filep)
{
  struct http_file *hf;
  unsigned conns = options->max_connections ? options->max_connections
    : DEFAULT_CONNECTIONS;
  struct conn *c;
  int r;

  pthread_once (&global_once, global_init);
  if (global_init_result != CURLE_OK) {
    qed_log (QED_LOG_ERROR, "%s: cannot initialize libcurl: %s", url,
             curl_easy_strerror (global_init_result));
    return -EIO;
  }
  if ((hf = calloc (1, sizeof *hf)) == NULL)
    return -ENOMEM;
  pthread_mutex_init (&hf->lock, NULL);
  pthread_cond_init (&hf->free_handle, NULL);
  if ((hf->url = strdup (url)) == NULL ||
      (r = ca_from_environment (hf)) < 0) {
    http_close (&hf->base);
    return -ENOMEM;
  }
  hf->base.ops = &http_ops;
  hf->base.writable = 0;
  hf->connect_timeout = options->connect_timeout ? options->connect_timeout
    : DEFAULT_CONNECT_TIMEOUT;
  hf->timeout = options->timeout ? options->timeout : DEFAULT_TIMEOUT;
  hf->redirect_protocols = redirect_protocols (url, options->protocols);
  hf->max_handles = conns < MAX_CONNECTIONS ? conns : MAX_CONNECTIONS;
  net_uri_identity (url, hf->id);

  if ((c = new_conn (hf)) == NULL) {
    http_close (&hf->base);
    return -EIO;
  }
  if ((r = probe (hf, c)) < 0) {
    free_conn (c);
    http_close (&hf->base);
    return r;
  }
  hf->idle[hf->nidle++] = c;
  hf->nhandles = 1;
  *filep = &hf->base;
  return 0;
}
