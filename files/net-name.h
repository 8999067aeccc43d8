/* nbdkit-qed: backing file names that may be URIs (files/net-name.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_NET_NAME_H
#define QED_NET_NAME_H

#include <stdbool.h>
#include <stddef.h>

/* The QED_PROTO_* bit of the protocol whose name (file, nbd, nbds,
 * nbd+unix, nbds+unix, http, https) is the len bytes at name, compared
 * ignoring case if any_case; 0 for none.
 */
unsigned net_proto_lookup (const char *name, size_t len, bool any_case);

/* The name of the protocol proto (one QED_PROTO_* bit); "?" for none. */
const char *net_proto_name (unsigned proto);

/* The canonical form of name in *canonical (malloc'd) and its
 * protocol (one QED_PROTO_* bit) in *proto: a URI for the network
 * forms (nbd://..., nbd:HOST:PORT, json:{...}, ...), the path itself
 * for a path (QED_PROTO_FILE; QEMU's "file:" prefix removed).  A name
 * that is none of the forms understood (an unknown protocol, a json:
 * key not supported) is logged, naming it, and gives -EINVAL.
 */
int net_name_parse (const char *name, char **canonical, unsigned *proto);

/* The URI that the relative path name means inside the image at the
 * URI base, which has protocol proto: name replaces the last segment
 * of base's path (as QEMU's path_combine does), and for NBD base's
 * query (the socket, the TLS parameters) is kept.  Sets *uri
 * (malloc'd); -ENOMEM.
 */
int net_name_combine (const char *base, unsigned proto, const char *name,
                      char **uri);

#endif /* QED_NET_NAME_H */
