/* nbdkit-qed: backing file names that may be URIs.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The forms are QEMU's: as QEMU does, a name with a ':' before any
 * '/' names a protocol ("nbd://h/x", "nbd:h:10809", "json:{...}"), and
 * every other name is a path.  A protocol we do not follow is refused,
 * never taken for a file name, so that "ssh://h/x" fails as it would in
 * QEMU instead of opening a local file of that name.
 *
 * Each network form becomes one URI, which the file layers open and
 * the protocol policy (net.c) judges:
 *   nbd:HOST:PORT[:exportname=E]        nbd://HOST:PORT/E
 *   nbd:unix:PATH[:exportname=E]        nbd+unix:///E?socket=PATH
 *   json:{"driver":"nbd","server":{"type":"inet","host":H,"port":P},
 *         "export":E}                   nbd://H:P/E
 *   json:{... "server":{"type":"unix","path":S} ...}
 *                                       nbd+unix:///E?socket=S
 *   json:{"driver":"http(s)","url":U}   U
 * with QEMU's other spellings: "file.driver" and file.* keys (under a
 * "driver":"raw" at the top, which is ignored: the header's format
 * bit or the probe decides), a nested "file":{...}, the old host /
 * port / path keys, ports as strings or numbers.  Any other key (tls-
 * creds, reconnect-delay, sslverify, ...) is refused by name rather
 * than ignored: its meaning would be lost.  The JSON parser is small
 * and strict: objects, strings (escapes of ASCII only), unsigned
 * integers.
 */

#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "qed.h"
#include "qed-net.h"
#include "net-name.h"

static const struct {
  const char *scheme;
  unsigned proto;
} schemes[] = {
  { "nbd", QED_PROTO_NBD },
  { "nbds", QED_PROTO_NBDS },
  { "nbd+unix", QED_PROTO_NBD_UNIX },
  { "nbds+unix", QED_PROTO_NBDS_UNIX },
  { "http", QED_PROTO_HTTP },
  { "https", QED_PROTO_HTTPS },
};

#define NBD_PROTOS (QED_PROTO_NBD | QED_PROTO_NBDS | QED_PROTO_NBD_UNIX | \
                    QED_PROTO_NBDS_UNIX)
#define UNIX_PROTOS (QED_PROTO_NBD_UNIX | QED_PROTO_NBDS_UNIX)

static int
refuse (const char *name, const char *why)
{
  qed_log (QED_LOG_ERROR, "backing file name %s: %s", name, why);
  return -EINVAL;
}

/* s with every byte but RFC 3986's unreserved ones and '/'
 * percent-encoded; NULL when out of memory.
 */
static char *
encode (const char *s)
{
  char *out = malloc (3 * strlen (s) + 1), *q = out;

  if (out == NULL)
    return NULL;
  for (; *s; s++) {
    unsigned char c = *s;

    if (isalnum (c) || strchr ("-._~/", c))
      *q++ = c;
    else
      q += sprintf (q, "%%%02X", c);
  }
  *q = '\0';
  return out;
}

/* The NBD URI of a server at host:port (TCP) or socket (Unix) and
 * an export; -ENOMEM.
 */
static int
nbd_uri (const char *host, const char *port, const char *socket,
         const char *export, char **uri, unsigned *proto)
{
  char *e = encode (export ? export : ""), *s = NULL;
  int r;

  if (e == NULL || (socket && (s = encode (socket)) == NULL)) {
    free (e);
    return -ENOMEM;
  }
  if (socket) {
    r = asprintf (uri, "nbd+unix:///%s?socket=%s", e, s);
    *proto = QED_PROTO_NBD_UNIX;
  }
  else {
    r = asprintf (uri, "nbd://%s:%s/%s", host, port ? port : "10809", e);
    *proto = QED_PROTO_NBD;
  }
  free (e);
  free (s);
  return r == -1 ? -ENOMEM : 0;
}

static bool
is_port (const char *s)
{
  size_t n = strspn (s, "0123456789");

  return n > 0 && n <= 5 && s[n] == '\0' && atoi (s) > 0 &&
    atoi (s) <= 65535;
}

/* A URI whose scheme is scheme_len bytes long ("nbd://..."). */
static int
parse_uri (const char *name, size_t scheme_len, char **canonical,
           unsigned *proto)
{
  const char *authority = name + scheme_len + 3;
  const char *query = strchr (authority, '?');
  size_t i;

  for (i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
    if (strlen (schemes[i].scheme) == scheme_len &&
        strncasecmp (name, schemes[i].scheme, scheme_len) == 0)
      break;
  if (i == sizeof schemes / sizeof schemes[0])
    return refuse (name, "unsupported protocol (nbd, nbds, nbd+unix,"
                   " nbds+unix, http and https are)");
  *proto = schemes[i].proto;
  if (*proto & UNIX_PROTOS) {
    size_t len = strcspn (authority, "/?#");

    /* A user name (for TLS) may come before the '@'; no host. */
    if (len > 0 && authority[len - 1] != '@')
      return refuse (name, "an nbd+unix URI names no host");
    if (query == NULL ||
        (strncmp (query + 1, "socket=", 7) != 0 &&
         strstr (query, "&socket=") == NULL))
      return refuse (name, "an nbd+unix URI needs ?socket=PATH");
  }
  else if (strcspn (authority, "/?#") == 0)
    return refuse (name, "the URI names no host");
  /* The scheme in lower case, the rest as it is. */
  *canonical = strdup (name);
  if (*canonical == NULL)
    return -ENOMEM;
  for (i = 0; i < scheme_len; i++)
    (*canonical)[i] = tolower ((unsigned char) name[i]);
  return 0;
}

/* QEMU's legacy nbd:HOST:PORT[:exportname=E], nbd:unix:PATH[...]. */
static int
parse_legacy_nbd (const char *name, char **canonical, unsigned *proto)
{
  char *s = strdup (name + 4), *export = NULL, *p, *host, *port;
  int r;

  if (s == NULL)
    return -ENOMEM;
  if ((p = strstr (s, ":exportname=")) != NULL) {
    *p = '\0';
    export = p + strlen (":exportname=");
  }
  if (strncmp (s, "unix:", 5) == 0) {
    r = s[5] == '\0' ? refuse (name, "nbd:unix: needs a socket path")
      : nbd_uri (NULL, NULL, s + 5, export, canonical, proto);
    free (s);
    return r;
  }
  host = s;
  if (s[0] == '[') {            /* [IPv6]:PORT */
    p = strchr (s, ']');
    port = p && p[1] == ':' ? p + 2 : NULL;
    if (p)
      p[1] = '\0';
  }
  else {
    p = strchr (s, ':');
    port = p ? p + 1 : NULL;
    if (p)
      *p = '\0';
  }
  if (host[0] == '\0' || port == NULL || !is_port (port))
    r = refuse (name, "expected nbd:HOST:PORT[:exportname=NAME] or"
                " nbd:unix:PATH[:exportname=NAME]");
  else
    r = nbd_uri (host, port, NULL, export, canonical, proto);
  free (s);
  return r;
}

/* json: names, flattened to dotted keys ("file.server.host"). */

#define MAX_KEYS 32
#define MAX_DEPTH 4

struct json {
  const char *name;             /* for messages */
  const char *p;
  size_t n;
  char *keys[MAX_KEYS];
  char *values[MAX_KEYS];
};

static void
skip_ws (struct json *j)
{
  j->p += strspn (j->p, " \t\r\n");
}

/* A JSON string at j->p into *s (malloc'd); -EINVAL, -ENOMEM. */
static int
json_string (struct json *j, char **s)
{
  size_t len = 0;
  char *out, c;

  if (*j->p != '"')
    return refuse (j->name, "json: a string was expected");
  j->p++;
  if ((out = malloc (strlen (j->p) + 1)) == NULL)
    return -ENOMEM;
  while ((c = *j->p++) != '"') {
    if (c == '\0' || (unsigned char) c < 0x20)
      goto bad;
    if (c == '\\') {
      c = *j->p++;
      if (c == 'u') {
        unsigned v;

        if (!isxdigit ((unsigned char) j->p[0]) ||
            !isxdigit ((unsigned char) j->p[1]) ||
            !isxdigit ((unsigned char) j->p[2]) ||
            !isxdigit ((unsigned char) j->p[3]) ||
            sscanf (j->p, "%4x", &v) != 1 || v == 0 || v > 0x7f)
          goto bad;
        j->p += 4;
        c = v;
      }
      else if (c == 'n')
        c = '\n';
      else if (c == 't')
        c = '\t';
      else if (c == 'r')
        c = '\r';
      else if (c == 'b')
        c = '\b';
      else if (c == 'f')
        c = '\f';
      else if (c != '"' && c != '\\' && c != '/')
        goto bad;
    }
    out[len++] = c;
  }
  out[len] = '\0';
  *s = out;
  return 0;
 bad:
  free (out);
  return refuse (j->name, "json: a string that is not valid (or not ASCII)");
}

static int
json_add (struct json *j, char *key, char *value)
{
  for (size_t i = 0; i < j->n; i++)
    if (strcmp (j->keys[i], key) == 0) {
      free (key);
      free (value);
      return refuse (j->name, "json: a key is given twice");
    }
  if (j->n == MAX_KEYS) {
    free (key);
    free (value);
    return refuse (j->name, "json: too many keys");
  }
  j->keys[j->n] = key;
  j->values[j->n++] = value;
  return 0;
}

/* An object at j->p whose keys get prefix. */
static int
json_object (struct json *j, const char *prefix, unsigned depth)
{
  char *key, *full, *value;
  int r;

  if (depth > MAX_DEPTH)
    return refuse (j->name, "json: objects nested too deep");
  if (*j->p != '{')
    return refuse (j->name, "json: an object was expected");
  j->p++;
  skip_ws (j);
  if (*j->p == '}') {
    j->p++;
    return 0;
  }
  for (;;) {
    skip_ws (j);
    if ((r = json_string (j, &key)) < 0)
      return r;
    r = asprintf (&full, "%s%s", prefix, key);
    free (key);
    if (r == -1)
      return -ENOMEM;
    skip_ws (j);
    if (*j->p != ':') {
      free (full);
      return refuse (j->name, "json: ':' was expected");
    }
    j->p++;
    skip_ws (j);
    if (*j->p == '{') {
      char *sub;

      r = asprintf (&sub, "%s.", full);
      free (full);
      if (r == -1)
        return -ENOMEM;
      r = json_object (j, sub, depth + 1);
      free (sub);
    }
    else if (*j->p == '"') {
      if ((r = json_string (j, &value)) == 0)
        r = json_add (j, full, value);
      else
        free (full);
    }
    else if (isdigit ((unsigned char) *j->p)) {
      size_t len = strspn (j->p, "0123456789");

      if ((value = strndup (j->p, len)) == NULL) {
        free (full);
        return -ENOMEM;
      }
      j->p += len;
      r = json_add (j, full, value);
    }
    else {
      free (full);
      r = refuse (j->name, "json: only strings, unsigned integers and"
                  " objects are understood as values");
    }
    if (r < 0)
      return r;
    skip_ws (j);
    if (*j->p == '}') {
      j->p++;
      return 0;
    }
    if (*j->p != ',')
      return refuse (j->name, "json: ',' or '}' was expected");
    j->p++;
  }
}

/* The value of key (after prefix), marked used; NULL if absent. */
static const char *
json_get (struct json *j, bool *used, const char *prefix, const char *key)
{
  size_t plen = strlen (prefix);

  for (size_t i = 0; i < j->n; i++)
    if (strncmp (j->keys[i], prefix, plen) == 0 &&
        strcmp (j->keys[i] + plen, key) == 0) {
      used[i] = true;
      return j->values[i];
    }
  return NULL;
}

/* The URI the parsed keys describe. */
static int
json_to_uri (struct json *j, char **canonical, unsigned *proto)
{
  bool used[MAX_KEYS] = { false };
  const char *prefix = "", *driver, *top, *url;
  int r;

  if (json_get (j, used, "", "file.driver")) {
    prefix = "file.";
    top = json_get (j, used, "", "driver");
    if (top && strcmp (top, "raw") != 0)
      return refuse (j->name, "json: only a raw format driver can be"
                     " above the protocol (file.driver)");
  }
  memset (used, 0, sizeof used);
  driver = json_get (j, used, prefix, "driver");
  if (driver == NULL)
    return refuse (j->name, "json: no driver");
  if (*prefix)
    json_get (j, used, "", "driver");

  if (strcmp (driver, "nbd") == 0) {
    const char *type = json_get (j, used, prefix, "server.type");
    const char *host = json_get (j, used, prefix, "host");
    const char *port = json_get (j, used, prefix, "port");
    const char *path = json_get (j, used, prefix, "path");
    const char *export = json_get (j, used, prefix, "export");

    if (type || json_get (j, used, prefix, "server.host") ||
        json_get (j, used, prefix, "server.path")) {
      if (host || port || path)
        return refuse (j->name, "json: both server.* and host/port/path");
      host = json_get (j, used, prefix, "server.host");
      port = json_get (j, used, prefix, "server.port");
      path = json_get (j, used, prefix, "server.path");
      if (type == NULL ||
          (strcmp (type, "inet") == 0 ? host == NULL || path != NULL
           : strcmp (type, "unix") == 0 ? path == NULL || host || port
           : true))
        return refuse (j->name, "json: server must be of type inet (with"
                       " host and port) or unix (with path)");
    }
    if ((host == NULL) == (path == NULL) || (path && port))
      return refuse (j->name, "json: an nbd server is a host (and port)"
                     " or a socket path");
    if (port && !is_port (port))
      return refuse (j->name, "json: the port is not a port number");
    if (host && (host[0] == '\0' || strpbrk (host, "/?#@ ")))
      return refuse (j->name, "json: the host is not a host name");
    r = nbd_uri (host, port, path, export, canonical, proto);
  }
  else if (strcmp (driver, "http") == 0 || strcmp (driver, "https") == 0) {
    url = json_get (j, used, prefix, "url");
    if (url == NULL || strncasecmp (url, driver, strlen (driver)) != 0 ||
        strncmp (url + strlen (driver), "://", 3) != 0)
      return refuse (j->name, "json: an http(s) driver needs a url of its"
                     " own protocol");
    r = parse_uri (url, strlen (driver), canonical, proto);
  }
  else
    return refuse (j->name, "json: only the drivers nbd, http and https"
                   " are supported");
  if (r < 0)
    return r;

  for (size_t i = 0; i < j->n; i++)
    if (!used[i]) {
      qed_log (QED_LOG_ERROR, "backing file name %s: json: key %s is not"
               " supported", j->name, j->keys[i]);
      free (*canonical);
      return -EINVAL;
    }
  return 0;
}

static int
parse_json (const char *name, char **canonical, unsigned *proto)
{
  struct json j = { .name = name, .p = name + 5 };
  int r;

  skip_ws (&j);
  r = json_object (&j, "", 0);
  if (r == 0) {
    skip_ws (&j);
    r = *j.p ? refuse (name, "json: text after the object")
      : json_to_uri (&j, canonical, proto);
  }
  for (size_t i = 0; i < j.n; i++) {
    free (j.keys[i]);
    free (j.values[i]);
  }
  return r;
}

int
net_name_parse (const char *name, char **canonical, unsigned *proto)
{
  size_t len = strcspn (name, ":/\\");

  if (name[len] != ':') {       /* a path */
    *proto = QED_PROTO_FILE;
    *canonical = strdup (name);
    return *canonical ? 0 : -ENOMEM;
  }
  if (strncmp (name + len, "://", 3) == 0)
    return parse_uri (name, len, canonical, proto);
  if (len == 4 && strncmp (name, "file", 4) == 0) {
    if (name[5] == '\0')
      return refuse (name, "file: names no file");
    *proto = QED_PROTO_FILE;
    *canonical = strdup (name + 5);
    return *canonical ? 0 : -ENOMEM;
  }
  if (len == 3 && strncmp (name, "nbd", 3) == 0)
    return parse_legacy_nbd (name, canonical, proto);
  if (len == 4 && strncmp (name, "json", 4) == 0)
    return parse_json (name, canonical, proto);
  return refuse (name, "unknown protocol (a path with a ':' before any"
                 " '/' can be written ./NAME)");
}

int
net_name_combine (const char *base, unsigned proto, const char *name,
                  char **uri)
{
  const char *path = strstr (base, "://"), *end, *slash = NULL, *p;
  char *e = encode (name);
  int r;

  if (e == NULL)
    return -ENOMEM;
  path += 3;
  path += strcspn (path, "/?#");        /* past the authority */
  end = path + strcspn (path, "?#");
  for (p = path; p < end; p++)
    if (*p == '/')
      slash = p;
  if (slash)
    r = asprintf (uri, "%.*s%s%.*s", (int) (slash + 1 - base), base, e,
                  (proto & NBD_PROTOS) ? (int) strcspn (end, "#") : 0, end);
  else
    r = asprintf (uri, "%.*s/%s%.*s", (int) (path - base), base, e,
                  (proto & NBD_PROTOS) ? (int) strcspn (end, "#") : 0, end);
  free (e);
  return r == -1 ? -ENOMEM : 0;
}
