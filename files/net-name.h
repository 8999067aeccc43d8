/* nbdkit-qed: backing file names that may be URIs (files/net-name.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_NET_NAME_H
#define QED_NET_NAME_H

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
