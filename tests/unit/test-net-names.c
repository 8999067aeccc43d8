/* nbdkit-qed tests: backing file names that may be URIs, and the
 * protocol policy (files/net.c, files/net-name.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Everything here happens in resolve, which connects nowhere: each
 * name is resolved through an opener that allows everything (to see
 * its canonical form) and through one that allows only the other
 * protocols (to see it refused, naming it and backing-protocols=).
 */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qed-net.h"
#include "test.h"

static struct qed_opener *all;

static struct qed_opener *
opener_for (unsigned protocols)
{
  struct qed_net_options options = { .protocols = protocols };
  struct qed_opener *o;

  CHECK_OK (qed_net_opener_new (&options, &o));
  return o;
}

/* name (in the image base) is canonical with protocol proto. */
static void
check_name (const char *name, const char *base, unsigned proto,
            const char *canonical)
{
  struct qed_opener *others = opener_for (QED_PROTO_ALL & ~proto);
  char *resolved;

  CHECK_OK (all->resolve (all, name, base, &resolved));
  if (strcmp (resolved, canonical) != 0) {
    fprintf (stderr, "%s: resolved to %s, expected %s\n", name, resolved,
             canonical);
    exit (EXIT_FAILURE);
  }
  free (resolved);

  test_clear_log ();
  CHECK_ERR (others->resolve (others, name, base, &resolved), EPERM);
  CHECK (test_log_contains (name));
  CHECK (test_log_contains ("backing-protocols="));
  qed_net_opener_free (others);
}

/* name is refused whatever the policy, with a message naming it and
 * containing why.
 */
static void
check_refused (const char *name, const char *why)
{
  char *resolved;

  test_clear_log ();
  CHECK_ERR (all->resolve (all, name, NULL, &resolved), EINVAL);
  CHECK (test_log_contains (name));
  CHECK (test_log_contains (why));
}

static void
test_uris (void)
{
  check_name ("nbd://h:10810/exp", NULL, QED_PROTO_NBD, "nbd://h:10810/exp");
  check_name ("NBD://h/", NULL, QED_PROTO_NBD, "nbd://h/");
  check_name ("nbds://h/x?tls-psk-file=/k", NULL, QED_PROTO_NBDS,
              "nbds://h/x?tls-psk-file=/k");
  check_name ("nbd+unix:///e?socket=/s", NULL, QED_PROTO_NBD_UNIX,
              "nbd+unix:///e?socket=/s");
  check_name ("nbds+unix://?socket=/s", NULL, QED_PROTO_NBDS_UNIX,
              "nbds+unix://?socket=/s");
  check_name ("nbds+unix://alice@/e?socket=/s", NULL, QED_PROTO_NBDS_UNIX,
              "nbds+unix://alice@/e?socket=/s");
  check_name ("http://h/d.img", NULL, QED_PROTO_HTTP, "http://h/d.img");
  check_name ("https://h:8443/d.img", NULL, QED_PROTO_HTTPS,
              "https://h:8443/d.img");
  check_refused ("nbd+unix:///e", "needs ?socket=PATH");
  check_refused ("nbd+unix://h/e?socket=/s", "names no host");
  check_refused ("nbd:///e", "names no host");
  check_refused ("ssh://h/x", "unsupported protocol");
  check_refused ("nbd+vsock://1/x", "unsupported protocol");
}

static void
test_legacy (void)
{
  check_name ("nbd:h:10809", NULL, QED_PROTO_NBD, "nbd://h:10809/");
  check_name ("nbd:h:1:exportname=a b", NULL, QED_PROTO_NBD,
              "nbd://h:1/a%20b");
  check_name ("nbd:[::1]:10809", NULL, QED_PROTO_NBD, "nbd://[::1]:10809/");
  check_name ("nbd:unix:/tmp/s:exportname=x", NULL, QED_PROTO_NBD_UNIX,
              "nbd+unix:///x?socket=/tmp/s");
  check_name ("nbd:unix:/a&b", NULL, QED_PROTO_NBD_UNIX,
              "nbd+unix:///?socket=/a%26b");
  check_refused ("nbd:h", "expected nbd:HOST:PORT");
  check_refused ("nbd:h:port", "expected nbd:HOST:PORT");
  check_refused ("nbd:h:70000", "expected nbd:HOST:PORT");
  check_refused ("nbd:unix:", "needs a socket path");
}

static void
test_json (void)
{
  check_name ("json:{\"driver\":\"nbd\",\"host\":\"h\",\"port\":\"1\","
              "\"export\":\"e\"}", NULL, QED_PROTO_NBD, "nbd://h:1/e");
  check_name ("json:{\"file.driver\":\"nbd\",\"file.path\":\"/s\"}", NULL,
              QED_PROTO_NBD_UNIX, "nbd+unix:///?socket=/s");
  check_name ("json: { \"driver\" : \"raw\", \"file\" : { \"driver\":"
              " \"nbd\", \"server\": { \"type\": \"inet\", \"host\": \"h\","
              " \"port\": 2 } } }", NULL, QED_PROTO_NBD, "nbd://h:2/");
  check_name ("json:{\"file\":{\"driver\":\"nbd\",\"server.type\":\"unix\","
              "\"server.path\":\"/\\u0073\"}}", NULL, QED_PROTO_NBD_UNIX,
              "nbd+unix:///?socket=/s");
  check_name ("json:{\"driver\":\"https\",\"url\":\"https://h/x\"}", NULL,
              QED_PROTO_HTTPS, "https://h/x");
  check_name ("json:{\"file.driver\":\"http\",\"file.url\":\"http://h/x\"}",
              NULL, QED_PROTO_HTTP, "http://h/x");
  check_refused ("json:{\"driver\":\"nbd\",\"host\":\"h\",\"tls-creds\":"
                 "\"t\"}", "key tls-creds is not supported");
  check_refused ("json:{\"driver\":\"ssh\",\"host\":\"h\"}",
                 "only the drivers nbd, http and https");
  check_refused ("json:{\"driver\":\"qcow2\",\"file.driver\":\"nbd\"}",
                 "only a raw format driver");
  check_refused ("json:{\"driver\":\"nbd\",\"host\":\"h\",\"path\":\"/s\"}",
                 "a host (and port) or a socket path");
  check_refused ("json:{\"driver\":\"nbd\",\"server\":{\"type\":\"fd\","
                 "\"str\":\"3\"}}", "of type inet");
  check_refused ("json:{\"driver\":\"http\",\"url\":\"https://h/x\"}",
                 "a url of its own protocol");
  check_refused ("json:{\"driver\":\"nbd\",\"host\":\"h\"", "',' or '}'");
  check_refused ("json:{\"driver\":\"nbd\",\"host\":\"h\"} x",
                 "text after the object");
  check_refused ("json:{\"driver\":\"nbd\",\"driver\":\"nbd\"}",
                 "a key is given twice");
  check_refused ("json:{\"driver\":[\"nbd\"]}", "only strings");
  check_refused ("json:{\"driver\":\"nbd\",\"host\":\"h\\u00e9\"}",
                 "not ASCII");
  check_refused ("json:{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{}}}}}}",
                 "nested too deep");
}

static void
test_paths (void)
{
  check_name ("/abs/base.raw", "/dir/top.qed", QED_PROTO_FILE,
              "/abs/base.raw");
  check_name ("base.raw", "/dir/top.qed", QED_PROTO_FILE, "/dir/base.raw");
  check_name ("./a:b", "/dir/top.qed", QED_PROTO_FILE, "/dir/./a:b");
  check_name ("file:/abs/x", NULL, QED_PROTO_FILE, "/abs/x");
  check_refused ("gluster://h/v/x", "unsupported protocol");
  check_refused ("a:b", "unknown protocol");
}

/* Relative names in images reached over the network. */
static void
test_relative (void)
{
  check_name ("b.qed", "nbd://h:1/dir/a.qed", QED_PROTO_NBD,
              "nbd://h:1/dir/b.qed");
  check_name ("b c", "nbd://h:1/a", QED_PROTO_NBD, "nbd://h:1/b%20c");
  check_name ("b", "nbd://h:1", QED_PROTO_NBD, "nbd://h:1/b");
  check_name ("b", "nbd+unix:///a?socket=/s", QED_PROTO_NBD_UNIX,
              "nbd+unix:///b?socket=/s");
  check_name ("b.img", "https://h/d/a.qed?sig=1#f", QED_PROTO_HTTPS,
              "https://h/d/b.img");
  /* An absolute path is a file on this host, as in QEMU. */
  check_name ("/local", "nbd://h/a", QED_PROTO_FILE, "/local");
  /* A URI in a local image stays as it is. */
  check_name ("nbd://h/x", "/dir/top.qed", QED_PROTO_NBD, "nbd://h/x");
}

static void
test_protocol_lists (void)
{
  unsigned p;

  CHECK_OK (qed_parse_protocols ("file", &p));
  CHECK (p == QED_PROTO_FILE);
  CHECK_OK (qed_parse_protocols ("nbd,nbds+unix,https", &p));
  CHECK (p == (QED_PROTO_NBD | QED_PROTO_NBDS_UNIX | QED_PROTO_HTTPS));
  CHECK_OK (qed_parse_protocols ("none", &p));
  CHECK (p == 0);
  CHECK_OK (qed_parse_protocols ("file,nbd,nbds,nbd+unix,nbds+unix,http,"
                                 "https", &p));
  CHECK (p == QED_PROTO_ALL);
  test_clear_log ();
  CHECK_ERR (qed_parse_protocols ("nbd,ftp", &p), EINVAL);
  CHECK (test_log_contains ("'ftp'"));
  CHECK_ERR (qed_parse_protocols ("", &p), EINVAL);
  CHECK_ERR (qed_parse_protocols ("nbd,", &p), EINVAL);
  CHECK_ERR (qed_parse_protocols ("none,nbd", &p), EINVAL);
}

/* With no protocol allowed, nothing resolves; the open of a name the
 * user gives (not resolved) is not judged.
 */
static void
test_none (void)
{
  struct qed_opener *o = opener_for (0);
  char *resolved;

  CHECK_ERR (o->resolve (o, "base.raw", "/dir/top.qed", &resolved), EPERM);
  CHECK_ERR (o->resolve (o, "nbd://h/", NULL, &resolved), EPERM);
  qed_net_opener_free (o);
}

int
main (void)
{
  test_capture_log ();
  all = opener_for (QED_PROTO_ALL);
  test_uris ();
  test_legacy ();
  test_json ();
  test_paths ();
  test_relative ();
  test_protocol_lists ();
  test_none ();
  qed_net_opener_free (all);
  return 0;
}
