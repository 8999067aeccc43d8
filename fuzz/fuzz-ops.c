/* nbdkit-qed fuzzers: any sequence of requests on a valid image.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The first input byte picks a geometry (cluster 4K or 64K, table_size
 * 1 or 4, a virtual size around L1-entry boundaries or the maximum,
 * pre-written data or not, a tiny or default L2 cache).  The image is
 * created in memory with qed_create_file.  The rest of the input is a
 * sequence of requests at offsets and lengths the input chooses
 * (near cluster, L2-slice and L2-table boundaries, the end of the
 * disk, zero-length, beyond the end), each mirrored on a model of the
 * disk:
 *   read, write, zero (with QED_FAST_ZERO and/or QED_MAY_TRIM), trim,
 *   flush, block status, and reopen (read-only or read-write).
 * Every read must return what the model says (after a trim, wholly
 * covered clusters may read as zeros or as before); a zero extent
 * must be zeros in the model; a request that is not inside the disk
 * fails with EINVAL, a change to a read-only image with EROFS, a fast
 * zero either succeeds or fails with ENOTSUP and changes nothing, and
 * nothing else fails.  After every request the engine's check finds
 * no corruption and no leak, and on close NEED_CHECK is cleared.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guardfile.h"
#include "memfile.h"
#include "qed.h"

#define PAGE 4096u
#define CHUNK_PAGES 512u                /* 2 MiB of disk per chunk */
#define MAX_IO (4u * 1024 * 1024)       /* reads and writes */
#define MAX_ZERO (64u * 1024 * 1024)    /* zeros and trims */
#define MAX_STEPS 64
#define FILE_BUDGET (256u * 1024 * 1024)
#define SLICE_ENTRIES 512u              /* entries per cached L2 slice */

static void
quiet (enum qed_log_level level, const char *msg)
{
  if (getenv ("FUZZ_VERBOSE"))
    fprintf (stderr, "[%d] %s\n", (int) level, msg);
}

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  qed_set_log_function (quiet);
  return 0;
}

static unsigned step;           /* for messages */

#define FAIL(...)                                                       \
  do {                                                                  \
    fprintf (stderr, "fuzz-ops: step %u: ", step);                      \
    fprintf (stderr, __VA_ARGS__);                                      \
    fprintf (stderr, "\n");                                             \
    abort ();                                                           \
  } while (0)

/*----------------------------------------------------------------------
 * Input.
 */
struct input {
  const uint8_t *p;
  size_t n;
};

static uint64_t
take (struct input *in, unsigned bytes)
{
  uint64_t v = 0;

  for (unsigned i = 0; i < bytes; i++) {
    v <<= 8;
    if (in->n > 0) {
      v |= *in->p++;
      in->n--;
    }
  }
  return v;
}

/*----------------------------------------------------------------------
 * The model: pages of the virtual disk, absent ones read as zeros.
 * A byte marked "maybe" was trimmed: it may read as its value or as
 * zero; the first read settles it.
 */
struct page {
  uint8_t data[PAGE];
  uint8_t maybe[PAGE];
};

struct model {
  uint64_t size;
  size_t nchunks;
  struct page ***chunks;
};

static void
model_init (struct model *m, uint64_t size)
{
  m->size = size;
  m->nchunks = (size + (uint64_t) PAGE * CHUNK_PAGES - 1) /
    ((uint64_t) PAGE * CHUNK_PAGES);
  m->chunks = calloc (m->nchunks ? m->nchunks : 1, sizeof *m->chunks);
  if (m->chunks == NULL)
    abort ();
}

static void
model_free (struct model *m)
{
  for (size_t c = 0; c < m->nchunks; c++)
    if (m->chunks[c]) {
      for (size_t i = 0; i < CHUNK_PAGES; i++)
        free (m->chunks[c][i]);
      free (m->chunks[c]);
    }
  free (m->chunks);
}

/* The page holding byte offset; created (zeroed) when create. */
static struct page *
model_page (struct model *m, uint64_t offset, bool create)
{
  uint64_t pn = offset / PAGE;
  struct page ***chunk = &m->chunks[pn / CHUNK_PAGES];

  if (*chunk == NULL) {
    if (!create)
      return NULL;
    *chunk = calloc (CHUNK_PAGES, sizeof **chunk);
    if (*chunk == NULL)
      abort ();
  }
  if ((*chunk)[pn % CHUNK_PAGES] == NULL && create) {
    (*chunk)[pn % CHUNK_PAGES] = calloc (1, sizeof (struct page));
    if ((*chunk)[pn % CHUNK_PAGES] == NULL)
      abort ();
  }
  return (*chunk)[pn % CHUNK_PAGES];
}

static void
model_drop_page (struct model *m, uint64_t offset)
{
  uint64_t pn = offset / PAGE;
  struct page **chunk = m->chunks[pn / CHUNK_PAGES];

  if (chunk) {
    free (chunk[pn % CHUNK_PAGES]);
    chunk[pn % CHUNK_PAGES] = NULL;
  }
}

/* The bytes from o to end that lie in o's page. */
static inline uint64_t
piece (uint64_t o, uint64_t end)
{
  uint64_t n = PAGE - o % PAGE;
  return n < end - o ? n : end - o;
}

/* Each piece [o, o + n) of [offset, offset + count) within one page. */
#define FOR_PIECES(offset, count, o, n)                                 \
  for (uint64_t o = (offset), end_ = (offset) + (count), n;             \
       o < end_ && (n = piece (o, end_)) > 0; o += n)

static void
model_write (struct model *m, const uint8_t *buf, uint64_t count,
             uint64_t offset)
{
  FOR_PIECES (offset, count, o, n) {
    struct page *p = model_page (m, o, true);
    memcpy (p->data + o % PAGE, buf + (o - offset), n);
    memset (p->maybe + o % PAGE, 0, n);
  }
}

static void
model_zero (struct model *m, uint64_t count, uint64_t offset)
{
  FOR_PIECES (offset, count, o, n) {
    if (n == PAGE)
      model_drop_page (m, o);
    else {
      struct page *p = model_page (m, o, false);
      if (p) {
        memset (p->data + o % PAGE, 0, n);
        memset (p->maybe + o % PAGE, 0, n);
      }
    }
  }
}

/* Trim: the wholly covered clusters may now read as zeros. */
static void
model_trim (struct model *m, uint64_t count, uint64_t offset,
            uint32_t cluster)
{
  uint64_t start = (offset + cluster - 1) / cluster * cluster;
  uint64_t end = (offset + count) / cluster * cluster;

  if (start >= end)
    return;
  FOR_PIECES (start, end - start, o, n) {
    struct page *p = model_page (m, o, false);
    if (p)
      memset (p->maybe + o % PAGE, 1, n);
  }
}

/* What was read must be what the model holds. */
static void
model_check (struct model *m, const uint8_t *buf, uint64_t count,
             uint64_t offset, const char *what)
{
  FOR_PIECES (offset, count, o, n) {
    struct page *p = model_page (m, o, false);
    const uint8_t *b = buf + (o - offset);
    static const uint8_t zeros[PAGE];

    /* The common cases first: no page, or nothing trimmed. */
    if (p == NULL ? memcmp (b, zeros, n) == 0
        : memcmp (b, p->data + o % PAGE, n) == 0 &&
          memcmp (p->maybe + o % PAGE, zeros, n) == 0)
      continue;
    for (uint64_t i = 0; i < n; i++) {
      unsigned j = (o + i) % PAGE;
      uint8_t want = p ? p->data[j] : 0;

      if (b[i] == want)
        continue;
      if (p && p->maybe[j] && b[i] == 0) {
        p->data[j] = 0;         /* settled: it was trimmed */
        p->maybe[j] = 0;
        continue;
      }
      FAIL ("%s: byte at offset %" PRIu64 " is 0x%02x, expected 0x%02x%s",
            what, o + i, b[i], want,
            p && p->maybe[j] ? " (or 0)" : "");
    }
    if (p)
      memset (p->maybe + o % PAGE, 0, n);     /* settled as read */
  }
}

/*----------------------------------------------------------------------
 * The image under test.
 */
struct state {
  struct memfile *mf;
  struct qed_image *img;
  struct qed_file *file;        /* the guard over mf */
  bool writable;
  uint32_t cluster;
  uint32_t table_size;
  uint64_t size;
  uint64_t l2_span;             /* virtual bytes per L2 table */
  size_t cache;
  struct model model;
  uint64_t last_offset;
  uint8_t *buf;                 /* MAX_IO */
  uint8_t *buf2;
};

static void
open_image (struct state *s, enum qed_access access)
{
  struct guard_options gopts = {
    .read_only = access == QED_READ_ONLY,
    .max_size = FILE_BUDGET,
  };
  struct qed_open_options opts = {
    .access = access,
    .no_backing = true,
    .no_locking = true,
    .l2_cache_size = s->cache,
  };
  int r;

  s->file = guard_new (memfile_file (s->mf), &gopts);
  r = qed_image_open_file (s->file, "ops.qed", &opts, &s->img);
  if (r < 0)
    FAIL ("opening the image: %s", strerror (-r));
  s->writable = access != QED_READ_ONLY;
  if (qed_image_size (s->img) != s->size ||
      qed_image_cluster_size (s->img) != s->cluster)
    FAIL ("the image has the wrong geometry after open");
}

static void
close_image (struct state *s)
{
  const unsigned char *d;
  size_t n;
  int r = qed_image_close (s->img);

  if (r < 0)
    FAIL ("close: %s", strerror (-r));
  s->img = NULL;
  d = memfile_data (s->mf, &n);
  if (n < 64 || (d[16] & 2) != 0)
    FAIL ("NEED_CHECK is still set after a clean close");
}

static void
check_image (struct state *s, const char *after)
{
  struct qed_check_result res;
  int r = qed_image_check (s->img, false, &res);

  if (r < 0)
    FAIL ("check after %s: %s", after, strerror (-r));
  if (res.corruptions || res.check_errors || res.leaks)
    FAIL ("check after %s: %" PRIu64 " corruptions, %" PRIu64 " leaks, %"
          PRIu64 " check errors", after, res.corruptions, res.leaks,
          res.check_errors);
}

static void
fill (uint8_t *buf, uint64_t n, uint64_t seed)
{
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;

  for (uint64_t i = 0; i < n; i++) {
    if (i % 8 == 0) {
      x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    }
    buf[i] = (uint8_t) ((x * 0x2545f4914f6cdd1dull) >> (8 * (i % 8))) | 1;
  }
}

/* An offset the input chooses: near a boundary the engine cares
 * about, near the end, or anywhere (also past the end).
 */
static uint64_t
pick_offset (struct state *s, struct input *in)
{
  unsigned kind = take (in, 1);
  int64_t delta = (int64_t) (take (in, 1) % 9) - 4;
  uint64_t base, k;

  switch (kind % 9) {
  case 0:                       /* a cluster boundary */
    k = take (in, 3);
    base = (k % (s->size / s->cluster + 1)) * s->cluster;
    break;
  case 1:                       /* an L2 slice boundary */
    k = take (in, 2);
    base = (k % (s->size / ((uint64_t) s->cluster * SLICE_ENTRIES) + 1)) *
      s->cluster * SLICE_ENTRIES;
    break;
  case 2:                       /* an L2 table boundary */
    k = take (in, 1);
    base = (k % (s->size / s->l2_span + 1)) * s->l2_span;
    break;
  case 3:                       /* the end */
    base = s->size - take (in, 2) % (s->size < 65536 ? s->size : 65536);
    break;
  case 4:                       /* near the last offset */
    base = s->last_offset + take (in, 2);
    break;
  case 5:                       /* anywhere */
    return take (in, 8);
  default:                      /* anywhere inside, 512-aligned or not */
    base = take (in, 6) % (s->size + 1);
    if (kind & 0x80)
      base &= ~UINT64_C (511);
    delta = 0;
  }
  if (delta < 0 && base < (uint64_t) -delta)
    return 0;
  return base + delta;
}

static uint64_t
pick_length (struct state *s, struct input *in, uint64_t offset,
             uint64_t max)
{
  unsigned kind = take (in, 1);
  uint64_t left = offset < s->size ? s->size - offset : 0;
  uint64_t n;

  switch (kind % 8) {
  case 0:
    return 0;
  case 1:
    return 1 + take (in, 1) % 16;
  case 2:                       /* clusters, give or take a byte */
    n = (1 + take (in, 1) % 64) * (uint64_t) s->cluster;
    return n + (int64_t) (take (in, 1) % 3) - 1;
  case 3:                       /* to the end, if it is near */
    return left < max ? left : max;
  case 4:                       /* past the end, or huge */
    if (take (in, 1) & 1)
      return left + 1 + take (in, 1);
    return UINT64_MAX - take (in, 1);
  default:
    return 1 + take (in, 3) % max;
  }
}

static bool
inside (struct state *s, uint64_t count, uint64_t offset)
{
  return offset <= s->size && count <= s->size - offset;
}

/* Read [offset, offset + count) (in MAX_IO pieces) and compare. */
static void
verify (struct state *s, uint64_t count, uint64_t offset, const char *what)
{
  while (count > 0) {
    uint64_t n = count < MAX_IO ? count : MAX_IO;
    int r = qed_image_read (s->img, s->buf2, n, offset);
    if (r < 0)
      FAIL ("%s: read of %" PRIu64 "+%" PRIu64 " failed: %s", what,
            offset, n, strerror (-r));
    model_check (&s->model, s->buf2, n, offset, what);
    offset += n;
    count -= n;
  }
}

struct extents {
  struct state *s;
  uint64_t next, end;
  unsigned calls;
  uint64_t verified;            /* bytes of zero extents read back */
};

static int
extent (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  struct extents *e = opaque;

  if (offset != e->next || length == 0 || length > e->end - offset)
    FAIL ("bad extent %" PRIu64 "+%" PRIu64 " (expected from %" PRIu64
          " to at most %" PRIu64 ")", offset, length, e->next, e->end);
  if (type & ~(unsigned) (QED_EXTENT_HOLE | QED_EXTENT_ZERO))
    FAIL ("bad extent type %u", type);
  if ((type & QED_EXTENT_ZERO) && e->verified < MAX_IO) {
    uint64_t n = length < MAX_IO ? length : MAX_IO;
    verify (e->s, n, offset, "zero extent");
    e->verified += n;
  }
  e->next = offset + length;
  return ++e->calls >= 1000;
}

/* An error that a request must return: EINVAL outside the disk, EROFS
 * for a change to a read-only image; else 0 (or the alternative, for
 * fast zero).
 */
static void
expect (int r, int want, int alt, const char *what, uint64_t count,
        uint64_t offset)
{
  if (r == want || (alt && r == alt))
    return;
  FAIL ("%s of %" PRIu64 "+%" PRIu64 " returned %d (%s), expected %d",
        what, offset, count, r, r < 0 ? strerror (-r) : "success", want);
}

static int
change_error (struct state *s, uint64_t count, uint64_t offset)
{
  if (!s->writable)
    return -EROFS;
  return inside (s, count, offset) ? 0 : -EINVAL;
}

static void
do_step (struct state *s, struct input *in)
{
  unsigned op = take (in, 1);
  unsigned flags = op & 0x80 ? QED_FUA : 0;
  uint64_t offset, count;
  int r, want;

  switch (op % 12) {
  case 0: case 1:                       /* read */
    offset = pick_offset (s, in);
    count = pick_length (s, in, offset, MAX_IO);
    if (!inside (s, count, offset)) {
      /* (Were it accepted, ASan would catch the overflow of buf.) */
      expect (qed_image_read (s->img, s->buf, count, offset), -EINVAL, 0,
              "read", count, offset);
      break;
    }
    if (count > MAX_IO)
      count = MAX_IO;
    verify (s, count, offset, "read");
    s->last_offset = offset;
    break;

  case 2: case 3:                       /* write */
    offset = pick_offset (s, in);
    count = pick_length (s, in, offset, MAX_IO);
    want = change_error (s, count, offset);
    if (want == 0 && count > MAX_IO)
      count = MAX_IO;
    fill (s->buf, count < MAX_IO ? count : MAX_IO, take (in, 1) + step);
    r = qed_image_write (s->img, s->buf, count, offset, flags);
    expect (r, want, 0, "write", count, offset);
    if (want == 0) {
      model_write (&s->model, s->buf, count, offset);
      verify (s, count, offset, "after write");
      s->last_offset = offset;
    }
    break;

  case 4: case 5: case 6: case 7: {     /* zero */
    unsigned zflags = flags | (op & 1 ? QED_FAST_ZERO : 0) |
      (op & 2 ? QED_MAY_TRIM : 0);
    uint64_t vcount;

    offset = pick_offset (s, in);
    count = pick_length (s, in, offset, MAX_ZERO);
    want = change_error (s, count, offset);
    vcount = count < MAX_IO ? count : MAX_IO;
    if (want == 0 && (zflags & QED_FAST_ZERO))
      verify (s, vcount, offset, "before fast zero");
    r = qed_image_zero (s->img, count, offset, zflags);
    if (r == -ENOTSUP && want == 0 && (zflags & QED_FAST_ZERO)) {
      verify (s, vcount, offset, "after a refused fast zero");
      break;
    }
    expect (r, want, 0, "zero", count, offset);
    if (want == 0) {
      model_zero (&s->model, count, offset);
      verify (s, vcount, offset, "after zero");
      if (count > vcount)
        verify (s, MAX_IO < count - vcount ? MAX_IO : count - vcount,
                offset + count - (MAX_IO < count - vcount ? MAX_IO
                                  : count - vcount), "after zero (end)");
      s->last_offset = offset;
    }
    break;
  }

  case 8:                               /* trim */
    offset = pick_offset (s, in);
    count = pick_length (s, in, offset, MAX_ZERO);
    want = change_error (s, count, offset);
    r = qed_image_trim (s->img, count, offset, flags);
    expect (r, want, 0, "trim", count, offset);
    if (want == 0) {
      model_trim (&s->model, count, offset, s->cluster);
      /* The edges of the range, which must not have changed. */
      verify (s, count < s->cluster ? count : s->cluster, offset,
              "after trim (start)");
      if (count > s->cluster)
        verify (s, s->cluster, offset + count - s->cluster,
                "after trim (end)");
      s->last_offset = offset;
    }
    break;

  case 9:                               /* flush */
    expect (qed_image_flush (s->img), 0, 0, "flush", 0, 0);
    break;

  case 10: {                            /* block status */
    struct extents e = { .s = s };

    offset = pick_offset (s, in);
    count = pick_length (s, in, offset, UINT32_MAX);
    e.next = offset;
    e.end = inside (s, count, offset) ? offset + count : 0;
    r = qed_image_block_status (s->img, count, offset, extent, &e);
    expect (r, inside (s, count, offset) ? 0 : -EINVAL, 0, "block status",
            count, offset);
    if (r == 0 && count > 0 && e.calls == 0)
      FAIL ("block status of %" PRIu64 "+%" PRIu64 " reported nothing",
            offset, count);
    break;
  }

  case 11: {                            /* reopen */
    unsigned how = take (in, 1);
    static const size_t caches[] = { 1, 64 * 1024, 0, 1 << 20 };

    close_image (s);
    s->cache = caches[how % 4];
    open_image (s, (how & 0x30) == 0x30 ? QED_READ_ONLY : QED_READ_WRITE);
    break;
  }
  }
}

/* Some data before the requests start: at the start, across the end
 * of the first L2 slice and the first L2 table, and at the end.
 */
static void
prewrite (struct state *s)
{
  uint64_t at[] = { 0, (uint64_t) s->cluster * SLICE_ENTRIES - 100,
                    s->l2_span - 3000, s->size - 5000 };

  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
    uint64_t n = 10000;
    if (at[i] >= s->size)
      continue;
    if (n > s->size - at[i])
      n = s->size - at[i];
    fill (s->buf, n, i + 100);
    if (qed_image_write (s->img, s->buf, n, at[i], 0) < 0)
      FAIL ("prewrite failed");
    model_write (&s->model, s->buf, n, at[i]);
  }
  /* A zero cluster in the middle of the data. */
  if (s->size > 2 * (uint64_t) s->cluster) {
    if (qed_image_zero (s->img, s->cluster, s->cluster, 0) < 0)
      FAIL ("prewrite zero failed");
    model_zero (&s->model, s->cluster, s->cluster);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct input in = { data, size };
  unsigned g = take (&in, 1);
  struct state s = { 0 };
  struct qed_create_options copts = { 0 };
  uint64_t nelems, max;
  int r;

  step = 0;
  s.cluster = g & 1 ? 65536 : 4096;
  s.table_size = g & 2 ? 4 : 1;
  nelems = (uint64_t) s.table_size * s.cluster / 8;
  s.l2_span = nelems * s.cluster;
  max = nelems * s.l2_span;
  /* 0-3 L2 tables' worth and a bit: small, a slice and a bit, half a
   * table, or (4K clusters only) the geometry's maximum.
   */
  switch ((g >> 4) & 3) {
  case 0: s.size = 512 * (1 + 2 * ((g >> 2) & 3)); break;
  case 1: s.size = (uint64_t) s.cluster * (SLICE_ENTRIES + 1) + 1536; break;
  case 2: s.size = s.l2_span / 2; break;
  case 3: s.size = s.cluster == 4096 ? max : s.l2_span / 4 + 512; break;
  }
  if (s.size != max)
    s.size += ((g >> 2) & 3) * s.l2_span;
  s.cache = g & 0x80 ? 1 : 0;

  s.mf = memfile_new (NULL, 0);
  copts.size = s.size;
  copts.cluster_size = s.cluster;
  copts.table_size = s.table_size;
  r = qed_create_file (memfile_file (s.mf), &copts);
  if (r < 0)
    FAIL ("creating the image: %s", strerror (-r));
  model_init (&s.model, s.size);
  s.buf = malloc (MAX_IO);
  s.buf2 = malloc (MAX_IO);
  if (s.buf == NULL || s.buf2 == NULL)
    abort ();
  open_image (&s, QED_READ_WRITE);
  if (g & 0x40)
    prewrite (&s);

  for (step = 1; step <= MAX_STEPS && in.n > 0; step++) {
    size_t fsize;

    do_step (&s, &in);
    check_image (&s, "a request");
    memfile_data (s.mf, &fsize);
    if (fsize > FILE_BUDGET / 2)
      break;
  }

  /* Everything still reads as the model, also after a reopen. */
  close_image (&s);
  open_image (&s, QED_READ_WRITE);
  check_image (&s, "reopening");
  for (size_t c = 0; c < s.model.nchunks; c++)
    if (s.model.chunks[c])
      for (size_t i = 0; i < CHUNK_PAGES; i++)
        if (s.model.chunks[c][i]) {
          uint64_t off = ((uint64_t) c * CHUNK_PAGES + i) * PAGE;
          verify (&s, s.size - off < PAGE ? s.size - off : PAGE, off,
                  "after reopen");
        }
  close_image (&s);

  model_free (&s.model);
  free (s.buf);
  free (s.buf2);
  memfile_free (s.mf);
  return 0;
}
