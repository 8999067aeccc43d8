/* nbdkit-qed: the network opener: names that may be URIs, and the
 * protocol policy.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * resolve turns a name into its canonical form (net-name.c) and judges
 * it against the operator's protocol list there, before anything is
 * opened: a refused name never costs a connection.  open trusts its
 * name (it is resolved, or the user's own) and only dispatches on its
 * form, so that the image the user names is opened whatever the list
 * says of backing files.
 *
 * A relative name in an image reached over the network is taken as
 * QEMU's path_combine takes it, relative to the image's URI: "b.qed"
 * in nbd://h/dir/a.qed is nbd://h/dir/b.qed, and for NBD the base's
 * query (socket=, TLS parameters) carries over, so nbd+unix:///a?
 * socket=S gives nbd+unix:///b?socket=S (QEMU would put the name in
 * the socket path).  An absolute path there is a path on this host, as
 * in QEMU, and needs the file protocol.
 */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "qed.h"
#include "qed-net.h"
#include "net-name.h"

static const struct {
  const char *name;
  unsigned proto;
} protocol_names[] = {
  { "file", QED_PROTO_FILE },
  { "nbd", QED_PROTO_NBD },
  { "nbds", QED_PROTO_NBDS },
  { "nbd+unix", QED_PROTO_NBD_UNIX },
  { "nbds+unix", QED_PROTO_NBDS_UNIX },
  { "http", QED_PROTO_HTTP },
  { "https", QED_PROTO_HTTPS },
};

#define NPROTOCOLS (sizeof protocol_names / sizeof protocol_names[0])

struct net_opener {
  struct qed_opener base;       /* first, so a qed_opener * converts */
  struct qed_net_options options;
};

int
qed_parse_protocols (const char *list, unsigned *protocols)
{
  unsigned set = 0;
  const char *p = list;
  size_t len, i;

  if (strcmp (list, "none") == 0) {
    *protocols = 0;
    return 0;
  }
  for (;;) {
    len = strcspn (p, ",");
    for (i = 0; i < NPROTOCOLS; i++)
      if (strlen (protocol_names[i].name) == len &&
          strncmp (p, protocol_names[i].name, len) == 0)
        break;
    if (i == NPROTOCOLS) {
      qed_log (QED_LOG_ERROR, "protocol list %s: unknown protocol '%.*s'"
               " (file, nbd, nbds, nbd+unix, nbds+unix, http, https, or"
               " none alone)", list, (int) len, p);
      return -EINVAL;
    }
    set |= protocol_names[i].proto;
    if (p[len] == '\0')
      break;
    p += len + 1;
  }
  *protocols = set;
  return 0;
}

static const char *
protocol_name (unsigned proto)
{
  for (size_t i = 0; i < NPROTOCOLS; i++)
    if (protocol_names[i].proto == proto)
      return protocol_names[i].name;
  return "?";
}

static int
net_resolve (const struct qed_opener *opener, const char *name,
             const char *base, char **resolved)
{
  const struct net_opener *no = (const struct net_opener *) opener;
  char *canonical = NULL;
  unsigned proto, base_proto;
  char *base_canonical;
  int r;

  if ((r = net_name_parse (name, &canonical, &proto)) < 0)
    return r;
  if (proto == QED_PROTO_FILE && canonical[0] != '/' && base &&
      strstr (base, "://") &&
      net_name_parse (base, &base_canonical, &base_proto) == 0) {
    free (canonical);
    canonical = NULL;
    if (base_proto != QED_PROTO_FILE) {
      proto = base_proto;
      r = net_name_combine (base_canonical, proto, name, &canonical);
    }
    else
      r = qed_posix_opener.resolve (&qed_posix_opener, name, base,
                                    &canonical);
    free (base_canonical);
  }
  else if (proto == QED_PROTO_FILE) {
    char *path = canonical;

    r = qed_posix_opener.resolve (&qed_posix_opener, path, base, &canonical);
    free (path);
  }
  if (r < 0)
    return r;

  if ((proto & no->options.protocols) == 0) {
    if (strcmp (name, canonical) == 0)
      qed_log (QED_LOG_ERROR, "backing file %s: protocol %s is not allowed"
               " (backing-protocols=)", name, protocol_name (proto));
    else
      qed_log (QED_LOG_ERROR, "backing file %s (%s): protocol %s is not"
               " allowed (backing-protocols=)", name, canonical,
               protocol_name (proto));
    free (canonical);
    return -EPERM;
  }
  *resolved = canonical;
  return 0;
}

/* Network files have no host page cache to bypass: QED_OPEN_DIRECT
 * needs nothing of them.  QED_OPEN_WRITE gives a read-only file, as
 * for a read-only host file; nothing can be created there.
 */
static int
net_open (const struct qed_opener *opener, const char *name,
          unsigned flags, struct qed_file **filep)
{
  const struct net_opener *no = (const struct net_opener *) opener;
  struct qed_file *file;
  char *canonical;
  unsigned proto;
  int r;

  if ((r = net_name_parse (name, &canonical, &proto)) < 0)
    return r;
  if (proto == QED_PROTO_FILE)
    r = qed_posix_opener.open (&qed_posix_opener, canonical, flags, filep);
  else if (flags & QED_OPEN_CREATE) {
    qed_log (QED_LOG_ERROR, "%s: files cannot be created over the network",
             name);
    r = -EROFS;
  }
  else {
    if (proto & (QED_PROTO_HTTP | QED_PROTO_HTTPS))
      r = qed_http_file_open (canonical, &no->options, &file);
    else
      r = qed_nbd_file_open (canonical, &no->options, &file);
    if (r == 0 && no->options.cache_size > 0)
      r = qed_read_cache_new (file, no->options.cache_size, &file);
    if (r == 0)
      *filep = file;
  }
  free (canonical);
  return r;
}

int
qed_net_opener_new (const struct qed_net_options *options,
                    struct qed_opener **openerp)
{
  struct net_opener *no = calloc (1, sizeof *no);

  if (no == NULL)
    return -ENOMEM;
  no->base.resolve = net_resolve;
  no->base.open = net_open;
  no->base.opaque = no;
  no->options = *options;
  *openerp = &no->base;
  return 0;
}

void
qed_net_opener_free (struct qed_opener *opener)
{
  free (opener);
}
