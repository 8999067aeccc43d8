/* nbdkit-qed: engine internals shared by the engine's sources.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Notes on the design
 * -------------------
 * Three things order what the threads using one image do.
 *
 * The gate (img->gate, gate.c) keeps requests apart from the calls
 * that change the image as a whole.  Requests pass it shared.
 * qed_image_enable_writes, qed_image_check, qed_image_set_backing,
 * qed_image_resize, qed_image_make_empty and qed_image_close close it,
 * which waits for the requests inside and holds new ones back, and
 * take the commit token as well, which keeps the background thread
 * out; so they run alone (whole_image_begin in open.c).
 *
 * The table lock guards the fields marked so in struct qed_image: the
 * L1 table, the L2 slice cache, the allocator and the lists of
 * allocations in flight.  It is two locks taken together (table_lock):
 * a mutex (img->lock), which the condition variables wait on, and the
 * write side of a rwlock (img->lookup_lock).  The read side alone is
 * enough to look up an entry in a slice that is in the cache
 * (lookup_run_shared): what that reads, the L1 table, the cache's
 * hash chains, the slices' states and entries, changes only under the
 * table lock, and the lookup takes no reference (the slice's used flag
 * it sets is atomic).  So lookups of mapped clusters do not queue
 * behind one another; a lookup that finds no slice, or one being
 * loaded, takes the table lock.  The rwlock prefers writers, so that a
 * stream of lookups cannot keep an allocation waiting.
 *
 * The table lock is held for memory work, with two exceptions: the
 * committer extends the file under it (extend_file in alloc.c, a rare
 * ftruncate), because only under the lock is alloc_end final, so that
 * the new size never cuts data that a request in flight wrote past
 * the batch; and the tail the file grew ahead of alloc_end is cut
 * under it (trim_grown_tail) for the same reason.  Reading a missing
 * L2 slice drops the lock while the slice, marked SLICE_LOADING, is
 * read.
 *
 * The commit token (img->committing, taken and given back under the
 * table lock) is held by one thread at a time: the committer of a
 * batch of links, the background thread while it marks the image
 * clean, or a call holding the gate closed.  Its holder alone writes
 * table entries and the header, without the table lock.
 *
 * So the file is used like this:
 * - pread and pwrite of data clusters, punch of wholly covered ones,
 *   pread of L2 slices: requests, without locks;
 * - pwrite of L1 and L2 entries, of a new table's zeros and of the
 *   header: the commit token;
 * - truncate: the table lock (extend_file, trim_grown_tail), or the
 *   gate closed (repair, resize, compaction);
 * - everything else check, repair, resize and compaction do, and lock:
 *   open, close, or the gate closed;
 * - flush and get_size: anyone.
 * In debug builds, assertions check the lock and the token at the top
 * of the functions that need them (table_assert_held and friends).
 *
 * Mappings only ever grow: an L2 entry goes from unallocated or zero to
 * a data cluster, or from unallocated to zero, never back, and a data
 * cluster never moves (outside of repair, resize and emptying, which
 * run with the gate closed and reload the tables in memory after; see
 * resize.c and relocate.c).  So once a lookup has seen a data cluster,
 * the request can read or write it in place after dropping the lock.
 *
 * An allocating write reserves clusters at the end of the file and
 * marks the virtual clusters in flight (other writers to them wait),
 * drops the lock, writes the data and the parts of the clusters the
 * request does not cover, then queues a link.  One thread at a time is
 * the committer: it takes every queued link, writes the L2 entries (and
 * new L2 tables, then their L1 entries) without the lock, then applies
 * them in memory.  Links queued meanwhile go out together in the next
 * batch, so concurrent allocating writes share metadata writes and
 * flushes.  The in-memory tables change only after the disk does, so a
 * reader never follows an entry that a failed write left off the disk.
 * alloc.c spells out the states an allocation and a new table go
 * through.
 *
 * Before writing a batch, the committer makes sure that the file
 * covers every cluster the batch links, so that no entry points at a
 * cluster not wholly inside the file: when the data writes did not
 * reach that far, it extends the file (sparsely) to the end of
 * everything reserved; nothing is written past the end of the
 * reservations, so this never cuts data.  A file that cannot change
 * size (no truncate) cannot take new clusters at all.
 *
 * While NEED_CHECK is set (no backing file), the file grows in steps of
 * GROW_STEP bytes ahead of alloc_end, so that most data writes land
 * inside the file: on ext4 a write past the end and an ftruncate for
 * every new cluster each cost a journalled inode update.  That tail,
 * zeros that no entry references, is cut again whenever the image is
 * left alone: on close, when the image is idle (with NEED_CHECK
 * cleared), and before a check or a reload of the tables (resize,
 * repair), which take the file's size for the end of the clusters.
 * After a crash it is at most GROW_STEP of leaked clusters, which the
 * check at the next writable open cuts, NEED_CHECK being set.
 *
 * Crash safety (see also dirty.c):
 * - Without a backing file, NEED_CHECK is made durable before the first
 *   batch that links new clusters; a crash can then leave entries
 *   whose data never reached the disk, which read as zeros (the old
 *   contents) because new clusters lie beyond the old end of the file,
 *   or point past the end of the file, which the check clears.
 * - With a backing file, or when new clusters overwrite bytes that were
 *   in the file at open (a partial last cluster), the data is flushed
 *   before the entries are written, as QEMU does; a crash can leak
 *   clusters but never expose a cluster whose copy of the backing data
 *   was lost.
 * - A new L2 table is written (and, in the same cases, flushed) before
 *   the L1 entry points at it.
 *
 * Entries past the end.  An entry pointing at or past open_end reads
 * as an error (data_entry_valid), but once the file grows over the
 * place it points at, it would alias the new cluster there for the
 * next open (or another program).  Finding such entries means reading
 * every L2 table, which the open does not do (it must not cost more
 * for a larger image); they are cleared just before the file first
 * grows past open_end instead, and an image that only gets reads and
 * in-place writes never pays for it.  img->past_end, under the table
 * lock, says where that stands:
 *
 *   UNCHECKED --first reservation of new clusters or a new table-->
 *   CLEARING --cleared on disk, flushed, forgotten in memory--> CLEAR
 *      \--failed (the reservation fails)--> UNCHECKED
 *
 * alloc_may_grow (alloc.c), under the table lock, moves it: the thread
 * that finds it UNCHECKED takes the commit token, so that no batch is
 * committed meanwhile, sets CLEARING and clears the entries on disk
 * without the table lock (clear_entries_past_end: reads of the tables
 * and writes of their entries are the token's, and while the state is
 * not CLEAR nothing is reserved past open_end, so every entry there is
 * invalid).  Then, under the lock, forget_entries_past_end sets those
 * entries to 0 in img->l1 and in the cached slices, and the state
 * becomes CLEAR.  Requests that want to grow the file meanwhile wait
 * for the token and look up again; reads and in-place writes go on
 * (zero clusters in existing tables are reserved, and their commit
 * waits for the token).  A slice read while the entries
 * were cleared may keep the old, invalid value: it still reads as an
 * error (open_end did not move), until it is read again.  A call
 * holding the image to itself that grows the file (resize) clears
 * them first as well; a reload sets UNCHECKED again (open_end moved),
 * except after a repair, which left none.
 */

#ifndef QED_INTERNAL_H
#define QED_INTERNAL_H

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "qed.h"
#include "qed-file.h"
#include "qed-format.h"
#include "l2-cache.h"

struct backing;

/* gate.c: see the notes above. */
struct gate {
  unsigned inside;              /* requests past the gate; atomic */
  bool closed;                  /* atomic; changes under lock */
  pthread_mutex_t lock;
  pthread_cond_t drained;       /* the last request left a closed gate */
  pthread_cond_t opened;
};
void gate_init (struct gate *g);
void gate_destroy (struct gate *g);
void gate_enter (struct gate *g);
void gate_leave (struct gate *g);
void gate_close (struct gate *g);
void gate_open (struct gate *g);

/* A request holds the gate until the end of the enclosing scope. */
static inline void
gate_leave_cleanup (struct gate **g)
{
  gate_leave (*g);
}
#define PASS_GATE_FOR_CURRENT_SCOPE(img)                                \
  __attribute__ ((cleanup (gate_leave_cleanup)))                        \
  struct gate *gate_passed_ = &(img)->gate;                             \
  gate_enter (gate_passed_)

/* new-links.c */
struct new_links {
  struct new_links_slot *slots;
  size_t nslots, count;
};
int new_links_reserve (struct new_links *nl, uint64_t key);
void new_links_add (struct new_links *nl, uint64_t key, unsigned index,
                    unsigned count);
bool new_links_has (const struct new_links *nl, uint64_t key, unsigned index);
void new_links_free (struct new_links *nl);

/* What a run of virtual clusters maps to. */
enum run_kind {
  RUN_DATA,                     /* contiguous data clusters */
  RUN_ZERO,                     /* zero clusters */
  RUN_UNALLOC,                  /* unallocated: the backing file, or zeros */
  RUN_BAD,                      /* an invalid L1 or L2 entry */
};

struct run {
  enum run_kind kind;
  uint64_t offset, length;      /* virtual bytes */
  uint64_t host;                /* RUN_DATA: host offset of offset */
  uint32_t l1_index;
  /* The L2 slice holding the run's entries, with a reference (NULL if
   * the L1 entry is empty or bad); index is the run's first entry in it.
   */
  struct l2_slice *slice;
  unsigned index;
};

/* The states of a new L2 table and of an allocation, in the order they
 * go through them; alloc.c says who moves them on.
 */
enum table_state {
  TABLE_RESERVED,               /* space reserved at host */
  TABLE_PREPARED,               /* that space reads as zeros in the file */
  TABLE_L1_WRITTEN,             /* the L1 entry on disk points at it */
  TABLE_LINKED,                 /* ... and so does the L1 table in memory */
};

enum alloc_state {
  ALLOC_RESERVED,               /* on img->inflight, data being written */
  ALLOC_QUEUED,                 /* on img->queue, waiting for a committer */
  ALLOC_COMMITTING,             /* in the batch being committed */
  ALLOC_LINKED,                 /* its L2 entries are on disk */
  ALLOC_DONE,                   /* off img->inflight; ret is final */
};

/* Whether the entries pointing past open_end have been cleared; see
 * "Entries past the end" in the notes above.
 */
enum past_end_state {
  PAST_END_UNCHECKED,           /* the file must not grow past open_end */
  PAST_END_CLEARING,            /* a thread holding the token clears them */
  PAST_END_CLEAR,               /* none left: the file may grow */
};

/* An L2 table that has been allocated but is not yet in the L1 table. */
struct pending_table {
  uint32_t l1_index;
  uint64_t host;
  enum table_state state;
  unsigned users;               /* allocations in flight using it */
  struct l2_slice **slices;     /* created so far, each referenced */
  size_t nslices;
  struct pending_table *next;
};

struct host_range {
  uint64_t start, end;
};

/* An allocation: from reservation to the link that makes it visible. */
struct alloc {
  uint64_t first;               /* first virtual cluster */
  uint32_t count;               /* clusters */
  enum run_kind was;            /* RUN_UNALLOC or RUN_ZERO */
  uint32_t l1_index;
  struct l2_slice *slice;       /* referenced until done */
  unsigned index;               /* first entry in slice */
  struct pending_table *table;  /* the L2 table is new */
  uint64_t host;                /* first new cluster, or QED_ENTRY_ZERO */
  bool needs_flush;             /* data must be durable before the link */
  uint64_t written_end;         /* its writes made the file reach this */
  /* Under the table lock, or the committer's while committing (state
   * atomically then, as its requester reads it under the lock).
   */
  enum alloc_state state;
  int ret;
  struct alloc *next_inflight;
  struct alloc *next_queued;
};

struct qed_image {
  /* Set by open; constant until close. */
  struct qed_file *file;
  char *path;                   /* for messages and backing names */
  char *backing_name;           /* from the header, NUL-terminated */
  uint32_t cluster_size;
  unsigned cluster_bits;
  uint64_t table_bytes;         /* one L1 or L2 table */
  unsigned table_bits;          /* log2 of entries per table */
  uint64_t header_bytes;
  enum qed_access access;
  const struct qed_opener *opener;
  bool no_locking, always_check, header_only;
  bool direct;                  /* backing files open QED_OPEN_DIRECT too */
  struct backing *backing;      /* changes only with the gate closed and
                                 * the token held (set_backing) */

  struct gate gate;
  /* Change only with the gate closed. */
  bool writable;                /* atomic: read by requests */
  bool writes_impossible;       /* atomic: enable_writes found EROFS */
  uint64_t sparse_from;         /* file size at open (or reload) */
  uint64_t l1_entries;          /* L1 entries covering the virtual disk */
  /* features change under the commit token, the rest with the gate
   * closed (image_size atomically: qed_image_size reads it outside);
   * so does backing_name.
   */
  struct qed_header header;

  pthread_mutex_t lock;         /* the table lock, with the write */
  pthread_rwlock_t lookup_lock; /* side of this one */
  pthread_cond_t slice_loaded;  /* a SLICE_LOADING slice is done */
  pthread_cond_t alloc_done;    /* an allocation left the in-flight list */
  pthread_cond_t commit_done;   /* a batch is committed, the token free */
  pthread_t lock_owner, token_owner;  /* for the assertions */

  /* Under the table lock (image_reload, alone with the gate closed,
   * reads the L1 table into l1, l1_bad and tables without it).
   */
  uint64_t *l1;                 /* l1_entries, CPU order */
  uint64_t l1_capacity;         /* entries the three arrays can hold */
  uint64_t *l1_bad;             /* bitmap of invalid entries */
  uint64_t *tables;             /* sorted host offsets of linked L2 tables */
  size_t ntables;
  struct l2_cache cache;
  uint64_t alloc_end;           /* where the next cluster goes */
  /* Reservations whose data writes failed, never linked: given back
   * once they reach alloc_end (alloc.c).
   */
  struct host_range *failed;
  size_t nfailed;
  uint64_t file_end;            /* the file reaches at least this far */
  uint64_t open_end;            /* whole clusters of the file at open */
  enum past_end_state past_end; /* see "Entries past the end" above */
  struct new_links new_links;   /* entries pointing beyond open_end */
  struct alloc *inflight;
  struct pending_table *pending;
  struct alloc *queue;          /* links waiting for the committer */
  bool committing;              /* the commit token */
  bool reported_bad;            /* logged the first bad entry served */
  uint64_t last_alloc_ns;

  /* Written holding the commit token; read under the table lock when
   * the token is free.
   */
  bool need_check_ours;         /* we set NEED_CHECK and must clear it */

  /* The background thread (dirty.c): bg_stop under the table lock, the
   * rest set by qed_image_start_background and close.
   */
  pthread_cond_t bg_wake;       /* on the monotonic clock */
  pthread_t bg_thread;
  bool bg_running, bg_stop;
  unsigned idle_ms;
};

/* The table lock and the commit token, checked in debug builds: each
 * owner is written only by the thread that holds what it names, so a
 * thread that reads its own id there does hold it.
 */
static inline void
set_owner (pthread_t *owner, bool mine)
{
#ifndef NDEBUG
  __atomic_store_n (owner, mine ? pthread_self () : (pthread_t) 0,
                    __ATOMIC_RELAXED);
#endif
}

static inline bool
is_owner (const pthread_t *owner)
{
  return pthread_equal (__atomic_load_n (owner, __ATOMIC_RELAXED),
                        pthread_self ());
}

static inline void
table_lock (struct qed_image *img)
{
  pthread_mutex_lock (&img->lock);
  pthread_rwlock_wrlock (&img->lookup_lock);
  set_owner (&img->lock_owner, true);
}

static inline void
table_unlock (struct qed_image *img)
{
  set_owner (&img->lock_owner, false);
  pthread_rwlock_unlock (&img->lookup_lock);
  pthread_mutex_unlock (&img->lock);
}

/* Wait on cond, until deadline (CLOCK_MONOTONIC for bg_wake) if not
 * NULL.  The write side is given up while waiting, so that lookups go
 * on; it is taken again holding the mutex, in table_lock's order.
 */
static inline void
table_wait_until (struct qed_image *img, pthread_cond_t *cond,
                  const struct timespec *deadline)
{
  set_owner (&img->lock_owner, false);
  pthread_rwlock_unlock (&img->lookup_lock);
  if (deadline)
    pthread_cond_timedwait (cond, &img->lock, deadline);
  else
    pthread_cond_wait (cond, &img->lock);
  pthread_rwlock_wrlock (&img->lookup_lock);
  set_owner (&img->lock_owner, true);
}

static inline void
table_wait (struct qed_image *img, pthread_cond_t *cond)
{
  table_wait_until (img, cond, NULL);
}

#define table_assert_held(img) assert (is_owner (&(img)->lock_owner))
#define table_assert_not_held(img) assert (!is_owner (&(img)->lock_owner))

/* Take the commit token (waiting for it) and give it back; called with
 * the table lock.
 */
void token_take (struct qed_image *img);
void token_give (struct qed_image *img);
#define token_assert_held(img) assert (is_owner (&(img)->token_owner))

/* Geometry helpers. */
static inline uint64_t
cluster_start (const struct qed_image *img, uint64_t offset)
{
  return offset & ~((uint64_t) img->cluster_size - 1);
}

static inline uint64_t
cluster_offset (const struct qed_image *img, uint64_t offset)
{
  return offset & (img->cluster_size - 1);
}

/* The L1 entries that cover a virtual disk of size bytes. */
static inline uint64_t
l1_entries_for (const struct qed_image *img, uint64_t size)
{
  unsigned bits = img->table_bits + img->cluster_bits;

  return (size >> bits) + ((size & ((UINT64_C (1) << bits) - 1)) != 0);
}

/* The capabilities a file may lack (see qed-file.h). */
static inline int
file_punch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  return f->ops->punch ? f->ops->punch (f, offset, count) : -EOPNOTSUPP;
}

static inline int
file_lock (struct qed_file *f, enum qed_lock_mode mode)
{
  return f->ops->lock ? f->ops->lock (f, mode) : 0;
}

static inline int
file_prefetch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  return f->ops->prefetch ? f->ops->prefetch (f, offset, count) : 0;
}

/* log.c */
#define qed_error(...) qed_log (QED_LOG_ERROR, __VA_ARGS__)
#define qed_notice(...) qed_log (QED_LOG_NOTICE, __VA_ARGS__)
#define qed_debug(...) qed_log (QED_LOG_DEBUG, __VA_ARGS__)
const char *image_name (const struct qed_image *img);

/* table.c: L1 and L2 tables on disk. */
/* Make the L1 arrays (l1, l1_bad, tables) hold entries (table_load_l1
 * does it at open; a resize before it grows the disk).
 */
int table_reserve_l1 (struct qed_image *img, uint64_t entries);
int table_load_l1 (struct qed_image *img);
bool l1_entry_is_bad (const struct qed_image *img, uint32_t index);
bool l1_entry_valid (const struct qed_image *img, uint64_t entry);
bool data_entry_valid (const struct qed_image *img, uint64_t entry,
                       uint64_t slice_key, unsigned index);
int table_read_slice (struct qed_image *img, struct l2_slice *s);
void slice_validate (struct qed_image *img, struct l2_slice *s);
int table_write_entries (struct qed_image *img, uint64_t host,
                         const uint64_t *entries, size_t n);
void tables_index_add (struct qed_image *img, uint64_t host);
int header_write (struct qed_image *img);
/* Apply fn to entries [first, end) of the table at host table, straight
 * from the file, a chunk at a time; fn gets each entry's index, may
 * change the entry and then sets *changed.  Changed chunks are written
 * back, after a flush (so that copies fn made are durable before the
 * entries pointing at them).  A chunk that cannot be read ends the
 * walk with *unreadable set.  Called holding the commit token.
 */
typedef int (*table_entry_fn) (void *opaque, uint64_t index, uint64_t *entry,
                               bool *changed);
int table_walk (struct qed_image *img, uint64_t table, uint64_t first,
                uint64_t end, table_entry_fn fn, void *opaque,
                bool *unreadable);

/* lookup.c */
/* 0 if the request (what) may run on [offset, offset + count): it lies
 * inside the virtual disk and the image was not opened header_only;
 * else -EINVAL after saying why not.
 */
int check_range (const struct qed_image *img, uint64_t count,
                 uint64_t offset, const char *what);
int lookup_run (struct qed_image *img, uint64_t offset, uint64_t length,
                struct run *run);
void run_release (struct qed_image *img, struct run *run);
int lookup_run_taking_lock (struct qed_image *img, uint64_t offset,
                            uint64_t length, struct run *run);
bool lookup_run_shared (struct qed_image *img, uint64_t offset,
                        uint64_t length, struct run *run);
int slice_get (struct qed_image *img, uint64_t key, bool create_zeroed,
               struct l2_slice **sp);
void slice_put (struct qed_image *img, struct l2_slice *s);

/* alloc.c */
/* With the table lock and the token held, cut the file back to
 * alloc_end where extend_file grew it further (see the notes).
 */
void trim_grown_tail (struct qed_image *img);
/* The same with the image to oneself (the token held, no lock). */
void trim_grown_tail_alone (struct qed_image *img);
bool has_grown_tail (const struct qed_image *img);
int alloc_reserve (struct qed_image *img, struct run *run, bool zero_clusters,
                   struct alloc *a);
int alloc_commit (struct qed_image *img, struct alloc *a, int data_ret);
uint64_t alloc_host_of (const struct qed_image *img, const struct alloc *a,
                        uint64_t offset);
/* Called with the table lock held, before reserving anything past
 * alloc_end.  0: the file may grow.  1: the lock was dropped (entries
 * past the end were cleared, or another thread was clearing them):
 * look up again.  Negative errno: they could not be cleared.
 */
int alloc_may_grow (struct qed_image *img);
/* The same with the image to oneself (the token held, no lock). */
int past_end_clear_now (struct qed_image *img);

/* read.c, write.c: the requests, inside the gate. */
int image_read (struct qed_image *img, void *buf, uint64_t count,
                uint64_t offset);
int image_flush (struct qed_image *img);
int write_zeros (struct qed_image *img, uint64_t host, uint64_t count);
/* Write the data (zeros when buf is NULL) of [offset, offset + count)
 * into the new clusters of a (reserved by alloc_reserve, or chosen by
 * the caller holding the image to itself: then only first, count, was
 * and host are used), and fill the rest of them with what they read
 * as before: the backing file for unallocated clusters, else zeros.
 * Zeros are not written where the file did not reach (sparse_from):
 * the file must be extended over the clusters before they are linked.
 */
int write_new_clusters (struct qed_image *img, struct alloc *a,
                        const void *buf, uint64_t count, uint64_t offset);
/* Copy count bytes of the file from host from to host to (the ranges
 * must not overlap).
 */
int copy_host (struct qed_image *img, uint64_t from, uint64_t to,
               uint64_t count);

/* dirty.c: NEED_CHECK. */
int need_check_set (struct qed_image *img);
int need_check_clear (struct qed_image *img);
void stop_background (struct qed_image *img);
uint64_t now_ns (void);

/* map.c: what each byte of an image and its backing chain reads from,
 * for block status and qed_image_map.
 */
struct chain_extent {
  struct qed_map_extent map;
  /* An invalid table entry maps it: map says data, without a host
   * offset, so that block status never claims zeros that are not.
   */
  bool bad;
};
typedef int (*chain_extent_fn) (void *opaque, const struct chain_extent *e);
/* Report [offset, offset + count) of img, at depth in its chain, as
 * consecutive extents (unmerged) until fn returns non-zero, which is
 * returned.  Called inside img's gate, the range inside its disk.
 */
int image_extents (struct qed_image *img, unsigned depth, uint64_t count,
                   uint64_t offset, chain_extent_fn fn, void *opaque);

/* backing.c */
/* The name of the format (not QED, not raw) whose magic the file
 * begins with, from the first bytes in buf; NULL if none is known.
 * OTHER_FORMAT_PROBE_BYTES are enough.
 */
#define OTHER_FORMAT_PROBE_BYTES 512
const char *other_format (const unsigned char *buf, size_t n);
int backing_open (struct qed_image *img, const struct qed_open_options *opts,
                  unsigned depth, const uint64_t *chain_ids, size_t nids);
void backing_close (struct backing *b);
int backing_read (struct backing *b, void *buf, uint64_t count,
                  uint64_t offset);
int backing_prefetch (struct backing *b, uint64_t count, uint64_t offset);
/* The extents of img's backing chain (img at depth) over a range that
 * img leaves unallocated, as image_extents reports them.
 */
int backing_extents (struct qed_image *img, unsigned depth, uint64_t count,
                     uint64_t offset, chain_extent_fn fn, void *opaque);
/* Its virtual size (of a raw file: its size at open). */
uint64_t backing_size (const struct backing *b);

/* open.c: opening images, also as backing files. */
int image_open (struct qed_file *file, const char *path,
                const struct qed_open_options *opts, unsigned depth,
                const uint64_t *chain_ids, size_t nids,
                struct qed_image **imgp);
/* Have the image to ourselves: close the gate (waiting for the requests
 * inside, holding new ones back) and take the commit token (keeping the
 * background thread out); and give it back.
 */
void whole_image_begin (struct qed_image *img);
void whole_image_end (struct qed_image *img);
/* After the tables on disk changed under the caller (a repair, a
 * resize), with the image to itself: make what memory holds of them
 * (L1 table, cached slices, allocator) follow the disk again.
 */
int image_reload (struct qed_image *img);

/* check.c: called with the gate closed and the commit token held. */
/* The check's bitmaps cover at most this many clusters (32 MiB). */
#define CHECK_WINDOW (UINT64_C (1) << 28)
int check_image (struct qed_image *img, bool repair,
                 struct qed_check_result *result);
/* Clear, on disk and durably, the L1 and L2 entries that point at or
 * past open_end (*count: how many).  Called holding the commit token
 * without the table lock, before anything grew the file past open_end
 * since open or the last reload.
 */
int clear_entries_past_end (struct qed_image *img, uint64_t *count);
/* Then, under the table lock still holding the token: make the L1
 * table and the cached slices say so too.
 */
void forget_entries_past_end (struct qed_image *img);
/* Set the bit of each of the file's first nclusters clusters (at most
 * CHECK_WINDOW) that the L1 table or an L2 table is, or that an entry
 * references, in bitmap ((nclusters + 63) / 64 words).  -EIO, logged,
 * if the image is not consistent (an invalid entry, a cluster
 * referenced twice, an unreadable table).
 */
int check_mark_referenced (struct qed_image *img, uint64_t nclusters,
                           uint64_t *bitmap);

/* relocate.c: called with the gate closed and the commit token held. */
/* NULL if a file of file_size bytes can be compacted, else why not. */
const char *compact_impossible (const struct qed_image *img,
                                uint64_t file_size);
/* Move the clusters in use into the clusters nothing references below
 * them and cut the file after the last: no leaks are left.  *freed:
 * the clusters given back.  The image must be consistent (-EIO
 * otherwise); its tables in memory must be reloaded after (the L1
 * table may have moved).
 */
int compact (struct qed_image *img, uint64_t *freed);

#endif /* QED_INTERNAL_H */
