/* nbdkit-qed: files over the network, and the opener that reaches them.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A backing file name may be a URI: nbd://, nbds://, nbd+unix://,
 * nbds+unix:// (libnbd), http://, https:// (libcurl), and QEMU's
 * legacy nbd:HOST:PORT[:exportname=NAME] and json:{...} forms.  The
 * network opener opens those with the file layers below and every
 * other name as a path (the POSIX opener), each only where the
 * operator's protocol list allows it: an image's header must not make
 * the process connect anywhere the operator did not permit.
 *
 * Network files are read-only (no pwrite, flush, truncate, punch or
 * lock: the server never receives a write), may be read from many
 * threads at once through a bounded pool of connections, report holes
 * through the extent capability where the protocol can say
 * (NBD base:allocation), and turn a lost server into -EIO for the
 * reads it affects, reconnecting with a bounded backoff on later
 * reads.  The NBD and HTTP(S) layers are loaded on demand (see
 * qed_nbd_file_open below); the opener, the name parsing and the read
 * cache are linked into the engine.
 */

#ifndef QED_NET_H
#define QED_NET_H

#include <stddef.h>

#include "qed-file.h"

/* The protocols a name may use, as bits of qed_net_options.protocols. */
#define QED_PROTO_FILE       (1u << 0)  /* a path on this host */
#define QED_PROTO_NBD        (1u << 1)  /* nbd://, nbd:HOST:PORT */
#define QED_PROTO_NBDS       (1u << 2)  /* nbds:// (TLS) */
#define QED_PROTO_NBD_UNIX   (1u << 3)  /* nbd+unix://, nbd:unix:PATH */
#define QED_PROTO_NBDS_UNIX  (1u << 4)  /* nbds+unix:// */
#define QED_PROTO_HTTP       (1u << 5)  /* http:// */
#define QED_PROTO_HTTPS      (1u << 6)  /* https:// */
#define QED_PROTO_ALL        ((1u << 7) - 1)

struct qed_net_options {
  unsigned protocols;           /* QED_PROTO_* bits that may be followed */
  unsigned connect_timeout;     /* seconds to connect; 0: the default */
  unsigned timeout;             /* seconds for one request; 0: the default */
  unsigned max_connections;     /* per network file, 1 to 8; 0: the default */
  size_t cache_size;            /* bytes of read cache per network file;
                                 * 0: none */
};

/* backing-cache-size='s default. */
#define QED_NET_DEFAULT_CACHE_SIZE (64 * 1024 * 1024)

/* How a front end parses numbers, reporting its own errors and
 * returning -1 on one: nbdkit's plugin and filter pass
 * nbdkit_parse_unsigned and nbdkit_parse_size, so that their messages
 * are nbdkit's.
 */
struct qed_number_parsers {
  int (*parse_unsigned) (const char *what, const char *str, unsigned *r);
  int64_t (*parse_size) (const char *str);
};

/* Parse key=value into *options when key is one of the parameters
 * that set them, as nbdkit's plugin and filter spell them:
 * backing-protocols=, backing-timeout=, backing-connect-timeout=,
 * backing-connections= and backing-cache-size=.  1 when key is one of
 * them and value is good, 0 when key is none of them (nothing is
 * changed), -EINVAL when value is not good (reported by parsers, or
 * else through qed_log).
 */
int qed_net_parse_option (struct qed_net_options *options,
                          const struct qed_number_parsers *parsers,
                          const char *key, const char *value);

/* Parse a comma-separated list of protocol names (file, nbd, nbds,
 * nbd+unix, nbds+unix, http, https; "none" for the empty set) into
 * *protocols.  An unknown name is reported through qed_log, naming it,
 * and gives -EINVAL.
 */
int qed_parse_protocols (const char *list, unsigned *protocols);

/* The opener for names that may be URIs, following options (copied).
 * A name whose protocol is not allowed is refused by resolve, with a
 * message naming the name, before any connection is attempted.
 */
int qed_net_opener_new (const struct qed_net_options *options,
                        struct qed_opener **openerp);
void qed_net_opener_free (struct qed_opener *opener);

/* The network file layers (files/nbd.c, files/http.c), opened
 * read-only by URI; open fails (with a message naming the URI) when the
 * server cannot be reached, or for HTTP when it does not serve byte
 * ranges.
 *
 * They are a module of their own, qed-net.so, the only object that
 * links libnbd and libcurl: the first call of either loads it
 * (files/net-load.c says from where, $QED_NET_MODULE first), so that
 * a process that opens local files only never maps those libraries.
 * When it cannot be loaded, open fails with -ELIBACC (-ELIBBAD: a
 * module of another version) and a message naming the URI, the
 * module's path and the reason; a later open tries again.  Thread
 * safe, as every open.
 */
int qed_nbd_file_open (const char *uri, const struct qed_net_options *options,
                       struct qed_file **filep);
int qed_http_file_open (const char *url,
                        const struct qed_net_options *options,
                        struct qed_file **filep);

/* A file that keeps up to cache_size bytes of what it read from inner
 * (which it owns from then on, also on failure) in memory, for files
 * that are slow to read twice.
 */
int qed_read_cache_new (struct qed_file *inner, size_t cache_size,
                        struct qed_file **filep);

#endif /* QED_NET_H */
