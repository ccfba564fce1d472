// SPDX-License-Identifier: GPL-2.0
/*
 * vrhp - a model of the Tungsten Fabric vRouter Flow and Bridge table memory.
 *
 * Two backends:
 *  btable:   each table is cut into 4 MiB chunks allocated at insmod with
 *            __get_free_pages(GFP_ATOMIC | __GFP_ZERO | __GFP_COMP, 10).
 *  hugepage: insmod creates no tables; the agent maps one hugetlbfs file per table
 *            and hands the mappings over (VRHP_IOC_HP_CONFIG); the module pins them
 *            long-term and uses page_address() (one huge page) or vmap() (several).
 *
 * Each table's memory starts with a struct vrhp_table_hdr; a later module that is
 * handed files with a compatible header adopts the tables (upgrade continuity).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/uaccess.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/jhash.h>
#include <linux/random.h>
#include <linux/ktime.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/capability.h>
#include <linux/overflow.h>
#include <linux/hugetlb.h>
#include <linux/version.h>
#include <linux/compat.h>
#include <linux/string.h>
#include <linux/sort.h>
#include <linux/delay.h>
#include <linux/dcache.h>
#include <linux/ratelimit.h>

#include "vrhp_uapi.h"

#ifndef VRHP_VERSION
#define VRHP_VERSION 1
#endif

/*
 * Mutation checks build the module with one known defect planted: VRHP_DEFECT=NAME
 * (kmod/README.md). VRHP_PLANTED(NAME) is 1 in that build only.
 */
#define VRHP_PLANTED(name)	IS_ENABLED(VRHP_DEFECT_##name)
#ifdef VRHP_DEFECT
#define VRHP_PLANTED_NOTE	" planted defect " __stringify(VRHP_DEFECT)
#else
#define VRHP_PLANTED_NOTE	""
#endif

#define VRHP_CHUNK_ORDER	10
#define VRHP_MAX_INDEX		0xfffffff0ULL	/* entry indices are 32 bit in the chains */

static unsigned long flow_entries = 524288;
module_param(flow_entries, ulong, 0444);
MODULE_PARM_DESC(flow_entries, "flow table main entries (multiple of 4)");
static long oflow_entries = -1;
module_param(oflow_entries, long, 0444);
MODULE_PARM_DESC(oflow_entries, "flow overflow entries (-1: 20% rounded up to 1024)");
static unsigned long bridge_entries = 262144;
module_param(bridge_entries, ulong, 0444);
MODULE_PARM_DESC(bridge_entries, "bridge table main entries (multiple of 4)");
static long bridge_oentries = -1;
module_param(bridge_oentries, long, 0444);
MODULE_PARM_DESC(bridge_oentries, "bridge overflow entries (-1: 20% rounded up to 1024)");
static char *mem = "hugepage";
module_param(mem, charp, 0444);
MODULE_PARM_DESC(mem, "table memory: btable or hugepage");
static bool fallback = true;
module_param(fallback, bool, 0444);
MODULE_PARM_DESC(fallback, "hugepage mode: fall back to btable when no usable huge pages");
static char *version_tag = "";
module_param(version_tag, charp, 0444);
MODULE_PARM_DESC(version_tag, "free-form version string reported by INFO");
static bool fault_zero_size;
module_param(fault_zero_size, bool, 0444);
MODULE_PARM_DESC(fault_zero_size,
		 "fault injection: INFO reports every table size as 0 (the upstream agent's field crash)");
static unsigned int fault_cfg_delay_ms;
module_param(fault_cfg_delay_ms, uint, 0644);
MODULE_PARM_DESC(fault_cfg_delay_ms,
		 "fault injection: HP_CONFIG sleeps this long (at most 10 s) holding the config lock");

#define VRHP_FAULT_DELAY_MAX_MS	10000
#define VRHP_FILL_BATCH		1024	/* inserts per FILL step under the locks */

/*
 * Reach counters, read-only in /sys/module/vrhp/parameters/reach: one line
 * "NAME CALLS REACHED" per row. For an ioctl CALLS counts every call of that
 * number by a capable caller and REACHED the calls that got past input
 * validation into the body (took the table or the config lock and worked on it).
 * The hp_* and mmap rows count the stages of HP_CONFIG and the map devices'
 * mmap: CALLS each entry into the stage, REACHED each completion.
 */
enum vrhp_reach_id {
	VRHP_R_INFO,
	VRHP_R_HP_CONFIG,
	VRHP_R_FLOW_ADD,
	VRHP_R_FLOW_DEL,
	VRHP_R_FLOW_GET,
	VRHP_R_BRIDGE_ADD,
	VRHP_R_BRIDGE_DEL,
	VRHP_R_BRIDGE_GET,
	VRHP_R_FILL,
	VRHP_R_STATS,
	VRHP_R_PATTERN,
	VRHP_R_MMAP,		/* mmap of /dev/vrhp_flow|bridge: calls, mapped */
	VRHP_R_HP_PIN,		/* segments: valid and offered to pinning, pinned and checked */
	VRHP_R_HP_ADOPT,	/* tables: matching header whose chains were walked, adopted */
	VRHP_R_HP_COMMIT,	/* configs that may change tables, configs that built them */
	VRHP_R_HP_RESET,	/* such configs while tables exist, old tables torn down */
	VRHP_R_NR,
};

static const char *const vrhp_reach_names[VRHP_R_NR] = {
	[VRHP_R_INFO] = "info",
	[VRHP_R_HP_CONFIG] = "hp_config",
	[VRHP_R_FLOW_ADD] = "flow_add",
	[VRHP_R_FLOW_DEL] = "flow_del",
	[VRHP_R_FLOW_GET] = "flow_get",
	[VRHP_R_BRIDGE_ADD] = "bridge_add",
	[VRHP_R_BRIDGE_DEL] = "bridge_del",
	[VRHP_R_BRIDGE_GET] = "bridge_get",
	[VRHP_R_FILL] = "fill",
	[VRHP_R_STATS] = "stats",
	[VRHP_R_PATTERN] = "pattern",
	[VRHP_R_MMAP] = "mmap",
	[VRHP_R_HP_PIN] = "hp_pin",
	[VRHP_R_HP_ADOPT] = "hp_adopt",
	[VRHP_R_HP_COMMIT] = "hp_commit",
	[VRHP_R_HP_RESET] = "hp_reset",
};

static atomic64_t vrhp_reach_calls[VRHP_R_NR];
static atomic64_t vrhp_reach_done[VRHP_R_NR];

static void vrhp_called(enum vrhp_reach_id id)
{
	atomic64_inc(&vrhp_reach_calls[id]);
}

static void vrhp_reached(enum vrhp_reach_id id)
{
	atomic64_inc(&vrhp_reach_done[id]);
}

/* The row of an ioctl number, or VRHP_R_NR for an unknown one. */
static enum vrhp_reach_id vrhp_reach_of(unsigned int cmd)
{
	static const struct {
		unsigned int cmd;
		enum vrhp_reach_id id;
	} map[] = {
		{ VRHP_IOC_INFO, VRHP_R_INFO },
		{ VRHP_IOC_HP_CONFIG, VRHP_R_HP_CONFIG },
		{ VRHP_IOC_FLOW_ADD, VRHP_R_FLOW_ADD },
		{ VRHP_IOC_FLOW_DEL, VRHP_R_FLOW_DEL },
		{ VRHP_IOC_FLOW_GET, VRHP_R_FLOW_GET },
		{ VRHP_IOC_BRIDGE_ADD, VRHP_R_BRIDGE_ADD },
		{ VRHP_IOC_BRIDGE_DEL, VRHP_R_BRIDGE_DEL },
		{ VRHP_IOC_BRIDGE_GET, VRHP_R_BRIDGE_GET },
		{ VRHP_IOC_FILL, VRHP_R_FILL },
		{ VRHP_IOC_STATS, VRHP_R_STATS },
		{ VRHP_IOC_PATTERN, VRHP_R_PATTERN },
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(map); i++)
		if (map[i].cmd == cmd)
			return map[i].id;
	return VRHP_R_NR;
}

static int vrhp_reach_get(char *buf, const struct kernel_param *kp)
{
	int i, n = 0;

	for (i = 0; i < VRHP_R_NR; i++)
		n += scnprintf(buf + n, PAGE_SIZE - n, "%s %lld %lld\n", vrhp_reach_names[i],
			       (long long)atomic64_read(&vrhp_reach_calls[i]),
			       (long long)atomic64_read(&vrhp_reach_done[i]));
	return n;
}

static int vrhp_reach_set(const char *val, const struct kernel_param *kp)
{
	return -EPERM;	/* read-only: counters are not a load parameter */
}

static const struct kernel_param_ops vrhp_reach_ops = {
	.set = vrhp_reach_set,
	.get = vrhp_reach_get,
};
module_param_cb(reach, &vrhp_reach_ops, NULL, 0444);
MODULE_PARM_DESC(reach, "read-only reach counters: NAME CALLS REACHED per ioctl and stage");

struct vrhp_ehdr {
	u32 flags;
	u32 next;
};

/* A range of physically adjacent 4 KiB pages of a segment. */
struct vrhp_run {
	unsigned long pfn;
	unsigned long nr;
};

/* One table's memory; HP_CONFIG builds it before it takes the config lock. */
struct vrhp_mem {
	u32 backend;
	struct vrhp_table_hdr *hdr;
	void *base;		/* hugepage: kernel address of the header (linear or vmap) */
	void **chunks;		/* btable */
	u32 nr_chunks;

	struct page **pages;	/* hugepage: pinned small pages */
	unsigned long nr_pages;
	struct vrhp_run *runs;	/* the pinned pages as physical ranges */
	unsigned long nr_runs;
	bool vmapped;
	bool contiguous;
	u32 nr_hpages;
	struct vrhp_seg_info seg;
};

struct vrhp_table {
	const char *name;
	u32 id;
	u32 esz;
	u32 koff;		/* key offset inside the entry */
	u32 ksz;		/* key size, multiple of 4 */
	u64 entries;
	u64 oentries;
	u64 nbuckets;
	u64 table_bytes;
	u64 file_bytes;

	struct vrhp_mem m;
	int detached_warned;	/* the hugetlbfs file let go of the pinned pages */

	u64 epoch;		/* +1 each time HP_CONFIG gives the table new memory */
	u64 ocursor;
	u64 olinked;		/* overflow entries linked into chains (module-owned bit) */
	struct mutex lock;	/* entries and counters */
	atomic_t mmap_count;
	u64 inserts, deletes, insert_failures, nospc;
	u64 last_added;		/* 1 + index of the last ADD; only LOSES_LAST_ADD reads it */
};

static struct vrhp_table vrhp_tables[VRHP_NR_TABLES];
static DECLARE_RWSEM(vrhp_cfg_sem);	/* write: table creation/teardown */
static u32 vrhp_mem;
static u32 vrhp_state = VRHP_STATE_UNINIT;
static u32 vrhp_last_outcome = VRHP_OUT_NONE;

static const char *const vrhp_outcome_names[] = {
	[VRHP_OUT_SUCCESS] = "SUCCESS",
	[VRHP_OUT_MEM_FAILURE] = "MEM_FAILURE",
	[VRHP_OUT_INVALID_ARG_FALLBACK_IN_USE] = "INVALID_ARG_FALLBACK_IN_USE",
	[VRHP_OUT_HUGEPAGE_FAILURE_FALLBACK_IN_USE] = "HUGEPAGE_FAILURE_FALLBACK_IN_USE",
	[VRHP_OUT_ALREADY_INITIALISED] = "ALREADY_INITIALISED",
	[VRHP_OUT_PARTIAL] = "PARTIAL",
	[VRHP_OUT_LAYOUT_MISMATCH] = "LAYOUT_MISMATCH",
	[VRHP_OUT_REFUSED] = "REFUSED",
};

static const char *vrhp_outcome_name(u32 o)
{
	if (o < ARRAY_SIZE(vrhp_outcome_names) && vrhp_outcome_names[o])
		return vrhp_outcome_names[o];
	return "NONE";
}

/* ---------------------------------------------------------------- entries */

static void *vrhp_mem_entry(const struct vrhp_table *t, const struct vrhp_mem *m, u64 idx)
{
	u64 off = VRHP_HDR_SIZE + idx * t->esz;

	if (m->base)
		return m->base + off;
	return m->chunks[off >> 22] + (off & (VRHP_CHUNK_SIZE - 1));
}

static void *vrhp_entry(struct vrhp_table *t, u64 idx)
{
	return vrhp_mem_entry(t, &t->m, idx);
}

static inline struct vrhp_ehdr *vrhp_eh(struct vrhp_table *t, u64 idx)
{
	return vrhp_entry(t, idx);
}

static u64 vrhp_bucket(struct vrhp_table *t, const void *key)
{
	return jhash2(key, t->ksz / 4, t->m.hdr->hash_seed) % t->nbuckets;
}

static u64 vrhp_bucket_tail(struct vrhp_table *t, const void *key)
{
	return vrhp_bucket(t, key) * VRHP_BUCKET_SIZE + VRHP_BUCKET_SIZE - 1;
}

/* next overflow entry index (absolute) or ~0 on end / out of range */
static u64 vrhp_next(struct vrhp_table *t, u32 next)
{
	if (!next || next > t->oentries)
		return ~0ULL;
	return t->entries + next - 1;
}

/*
 * A chain longer than the overflow area revisits an entry: the table memory,
 * writable by the agent, holds a cycle. Every walk stops there.
 */
static bool vrhp_chain_too_long(struct vrhp_table *t, u64 *steps)
{
	if (++*steps <= t->oentries)
		return false;
	pr_warn_ratelimited("%s table: an overflow chain is longer than the %llu overflow entries (a cycle in the table memory)\n",
			    t->name, t->oentries);
	return true;
}

static bool vrhp_key_eq(struct vrhp_table *t, u64 idx, const void *key)
{
	struct vrhp_ehdr *eh = vrhp_eh(t, idx);

	return (READ_ONCE(eh->flags) & VRHP_EF_VALID) &&
	       !memcmp((char *)eh + t->koff, key, t->ksz);
}

/*
 * Find key. *prev_next, when asked for, is the next field that points at an
 * overflow entry found (NULL for a main entry).
 */
static int vrhp_find(struct vrhp_table *t, const void *key, u64 *idx, u32 **prev_next)
{
	u64 tail = vrhp_bucket_tail(t, key);
	u64 i, n, steps = 0;
	u32 *link = &vrhp_eh(t, tail)->next;

	for (i = tail + 1 - VRHP_BUCKET_SIZE; i <= tail; i++) {
		if (vrhp_key_eq(t, i, key)) {
			*idx = i;
			if (prev_next)
				*prev_next = NULL;
			return 0;
		}
	}
	n = vrhp_next(t, READ_ONCE(*link));
	while (n != ~0ULL) {
		if (vrhp_chain_too_long(t, &steps))
			return -EUCLEAN;
		if (vrhp_key_eq(t, n, key)) {
			*idx = n;
			if (prev_next)
				*prev_next = link;
			return 0;
		}
		link = &vrhp_eh(t, n)->next;
		n = vrhp_next(t, READ_ONCE(*link));
	}
	return -ENOENT;
}

static int vrhp_lookup(struct vrhp_table *t, const void *key, u64 *idx)
{
	return vrhp_find(t, key, idx, NULL);
}

/* Insert key; returns the entry index with the key written and VALID set. */
static int vrhp_insert(struct vrhp_table *t, const void *key, u64 *idx)
{
	u64 b = vrhp_bucket_tail(t, key) + 1 - VRHP_BUCKET_SIZE;
	struct vrhp_ehdr *tail = vrhp_eh(t, b + VRHP_BUCKET_SIZE - 1);
	struct vrhp_ehdr *eh;
	u64 i, n, slot = ~0ULL, steps = 0;
	int err;

	err = vrhp_lookup(t, key, &n);
	if (err != -ENOENT)
		return err ? err : -EEXIST;

	for (i = 0; i < VRHP_BUCKET_SIZE; i++) {
		if (!(READ_ONCE(vrhp_eh(t, b + i)->flags) & VRHP_EF_VALID)) {
			slot = b + i;
			goto found;
		}
	}
	/* reuse an entry of this bucket's chain that the agent aged out */
	n = vrhp_next(t, READ_ONCE(tail->next));
	while (n != ~0ULL) {
		if (vrhp_chain_too_long(t, &steps))
			return -EUCLEAN;
		eh = vrhp_eh(t, n);
		if (!(READ_ONCE(eh->flags) & VRHP_EF_VALID)) {
			slot = n;
			goto found;
		}
		n = vrhp_next(t, READ_ONCE(eh->next));
	}
	/* take a free overflow entry and link it at the chain head */
	for (steps = 0; t->olinked < t->oentries && steps < t->oentries; steps++) {
		u64 o = t->ocursor;

		t->ocursor = (o + 1 == t->oentries) ? 0 : o + 1;
		eh = vrhp_eh(t, t->entries + o);
		if (!(READ_ONCE(eh->flags) & (VRHP_EF_LINKED | VRHP_EF_VALID))) {
			WRITE_ONCE(eh->next, READ_ONCE(tail->next));
			WRITE_ONCE(eh->flags, VRHP_EF_LINKED);
			WRITE_ONCE(tail->next, (u32)(o + 1));
			t->olinked++;
			slot = t->entries + o;
			goto found;
		}
	}
	return -ENOSPC;

found:
	eh = vrhp_eh(t, slot);
	memset((char *)eh + sizeof(*eh), 0, t->esz - sizeof(*eh));
	memcpy((char *)eh + t->koff, key, t->ksz);
	smp_wmb();
	WRITE_ONCE(eh->flags, READ_ONCE(eh->flags) | VRHP_EF_VALID);
	*idx = slot;
	return 0;
}

/*
 * Delete key. An overflow entry leaves its chain and goes back to the free
 * pool; its own next stays, so a reader standing on it still reaches the rest.
 */
static int vrhp_delete(struct vrhp_table *t, const void *key)
{
	struct vrhp_ehdr *eh;
	u32 *prev_next;
	u64 idx;
	int err;

	err = vrhp_find(t, key, &idx, &prev_next);
	if (err)
		return err;
	eh = vrhp_eh(t, idx);
	WRITE_ONCE(eh->flags, READ_ONCE(eh->flags) & ~VRHP_EF_VALID);
	smp_wmb();
	memset((char *)eh + sizeof(*eh), 0, t->esz - sizeof(*eh));
	if (prev_next) {
		WRITE_ONCE(*prev_next, READ_ONCE(eh->next));
		smp_wmb();
		WRITE_ONCE(eh->flags, 0);
		if (t->olinked)
			t->olinked--;
	}
	return 0;
}

/*
 * Walk the overflow chain of bucket b, marking its entries in seen. Returns the
 * chain's length, or -EUCLEAN when an entry is reached a second time (a cycle, or
 * two chains merged) or, when strict (adoption), a next is out of range or an
 * entry is not marked LINKED; otherwise an out-of-range next ends the chain, as
 * for lookups. All walks of one table together take at most oentries steps.
 */
static long vrhp_chain_walk(const struct vrhp_table *t, const struct vrhp_mem *m, u64 b,
			    unsigned long *seen, bool strict)
{
	const struct vrhp_ehdr *eh = vrhp_mem_entry(t, m, b * VRHP_BUCKET_SIZE +
						    VRHP_BUCKET_SIZE - 1);
	u32 next = READ_ONCE(eh->next);
	long len = 0;

	while (next) {
		if (next > t->oentries)
			return strict ? -EUCLEAN : len;
		if (test_and_set_bit(next - 1, seen))
			return -EUCLEAN;
		eh = vrhp_mem_entry(t, m, t->entries + next - 1);
		if (strict && !(READ_ONCE(eh->flags) & VRHP_EF_LINKED))
			return -EUCLEAN;
		len++;
		next = READ_ONCE(eh->next);
	}
	return len;
}

static unsigned long *vrhp_seen_alloc(const struct vrhp_table *t)
{
	return kvcalloc(BITS_TO_LONGS(t->oentries), sizeof(unsigned long), GFP_KERNEL);
}

/*
 * Before adopting a table: every chain ends, no overflow entry is on two chains
 * or twice on one, an overflow entry on a chain is LINKED and one on no chain
 * carries no flags (it could never be found or reused). *linked is then the
 * number of linked entries.
 */
static int vrhp_chains_check(const struct vrhp_table *t, const struct vrhp_mem *m, u64 *linked)
{
	unsigned long *seen = vrhp_seen_alloc(t);
	u64 b, o, n = 0;
	int err = 0;

	if (!seen)
		return -ENOMEM;
	for (b = 0; b < t->nbuckets; b++) {
		long len = vrhp_chain_walk(t, m, b, seen, true);

		if (len < 0) {
			pr_err_ratelimited("%s table: overflow chain of bucket %llu is corrupt (a cycle, a merge or a next out of range): not adopting\n",
					   t->name, b);
			err = len;
			goto out;
		}
		n += len;
		if (!(b & 4095))
			cond_resched();
	}
	for (o = 0; o < t->oentries; o++) {
		const struct vrhp_ehdr *eh = vrhp_mem_entry(t, m, t->entries + o);

		if (!test_bit(o, seen) && READ_ONCE(eh->flags)) {
			pr_err_ratelimited("%s table: overflow entry %llu is on no chain but has flags 0x%x: not adopting\n",
					   t->name, o, READ_ONCE(eh->flags));
			err = -EUCLEAN;
			goto out;
		}
		if (!(o & 65535))
			cond_resched();
	}
	*linked = n;
out:
	kvfree(seen);
	return err;
}

/* ---------------------------------------------------------------- sizes */

static int vrhp_compute(struct vrhp_table *t, const char *pname, unsigned long main,
			const char *oname, long oflow)
{
	u64 total, bytes, file;
	u64 o;

	if (!main || main % VRHP_BUCKET_SIZE) {
		pr_err("%s=%lu invalid: must be a non-zero multiple of %u\n", pname, main,
		       VRHP_BUCKET_SIZE);
		return -EINVAL;
	}
	if (oflow == -1) {
		if (check_mul_overflow((u64)main, (u64)2, &o)) {
			pr_err("%s=%lu too large\n", pname, main);
			return -EINVAL;
		}
		o = DIV_ROUND_UP(o, 10);
		o = round_up(o, 1024);
	} else if (oflow <= 0 || oflow % VRHP_BUCKET_SIZE) {
		pr_err("%s=%ld invalid: must be a non-zero multiple of %u\n", oname, oflow,
		       VRHP_BUCKET_SIZE);
		return -EINVAL;
	} else {
		o = oflow;
	}
	if (check_add_overflow((u64)main, o, &total) ||
	    check_mul_overflow(total, (u64)t->esz, &bytes) ||
	    check_add_overflow(bytes, (u64)VRHP_HDR_SIZE, &file) ||
	    file > U64_MAX - VRHP_PAGE_1G) {
		pr_err("%s=%lu %s=%llu: table size overflows 64 bits\n", pname, main, oname, o);
		return -EINVAL;
	}
	if (total > VRHP_MAX_INDEX) {
		pr_err("%s=%lu %s=%llu: more than %llu entries\n", pname, main, oname, o,
		       VRHP_MAX_INDEX);
		return -EINVAL;
	}
	t->entries = main;
	t->oentries = o - (VRHP_PLANTED(SHORT_TABLE) && o);
	t->nbuckets = main / VRHP_BUCKET_SIZE;
	t->table_bytes = bytes;
	t->file_bytes = file;
	return 0;
}

/* ---------------------------------------------------------------- headers */

static void vrhp_hdr_init(struct vrhp_table *t, u32 seed)
{
	struct vrhp_table_hdr *h = t->m.hdr;

	memset(h, 0, VRHP_HDR_SIZE);
	h->magic = VRHP_HDR_MAGIC;
	h->layout_version = VRHP_LAYOUT;
	h->table = t->id;
	h->entry_size = t->esz;
	h->hdr_size = VRHP_HDR_SIZE;
	h->entries = t->entries;
	h->oentries = t->oentries;
	h->table_bytes = t->table_bytes;
	h->hash_seed = seed;
	h->writer_version = VRHP_VERSION;
	h->generation = 1;
	h->instance = get_random_u64();
	h->created_ns = ktime_get_real_ns();
}

static bool vrhp_mem_is_zero(const void *p, size_t len)
{
	return !memchr_inv(p, 0, len);
}

/* 1: fresh (all zero), 0: compatible, <0: mismatch (pr_err says why) */
static int vrhp_hdr_check(struct vrhp_table *t, const struct vrhp_table_hdr *h)
{
	if (vrhp_mem_is_zero(h, VRHP_HDR_SIZE))
		return 1;
#define VRHP_CHK(field, want) do {						\
	if ((u64)h->field != (u64)(want)) {					\
		pr_err_ratelimited("%s table: file header " #field " %llu, module expects %llu: layout mismatch\n", \
		       t->name, (u64)h->field, (u64)(want));			\
		return -EPROTO;							\
	} } while (0)
	VRHP_CHK(magic, VRHP_HDR_MAGIC);
	VRHP_CHK(layout_version, VRHP_LAYOUT);
	VRHP_CHK(table, t->id);
	VRHP_CHK(entry_size, t->esz);
	VRHP_CHK(hdr_size, VRHP_HDR_SIZE);
	VRHP_CHK(entries, t->entries);
	VRHP_CHK(oentries, t->oentries);
	VRHP_CHK(table_bytes, t->table_bytes);
#undef VRHP_CHK
	return 0;
}

static void vrhp_zero_entries(struct vrhp_table *t)
{
	u64 off;

	for (off = 0; off < t->table_bytes; off += VRHP_CHUNK_SIZE) {
		u64 len = min_t(u64, VRHP_CHUNK_SIZE, t->table_bytes - off);

		memset(t->m.base + VRHP_HDR_SIZE + off, 0, len);
		cond_resched();
	}
}

/* ---------------------------------------------------------------- btable */

static void vrhp_bt_free(struct vrhp_mem *m)
{
	u32 i;

	if (!m->chunks)
		return;
	for (i = 0; i < m->nr_chunks; i++)
		if (m->chunks[i])
			free_pages((unsigned long)m->chunks[i], VRHP_CHUNK_ORDER);
	kfree(m->chunks);
	m->chunks = NULL;
	m->nr_chunks = 0;
}

static int vrhp_bt_alloc(struct vrhp_table *t, struct vrhp_mem *m)
{
	u32 n = DIV_ROUND_UP(t->file_bytes, VRHP_CHUNK_SIZE);
	u32 i;

	m->chunks = kcalloc(n, sizeof(*m->chunks), GFP_KERNEL);
	if (!m->chunks)
		return -ENOMEM;
	m->nr_chunks = n;
	for (i = 0; i < n; i++) {
		/* __GFP_NOWARN: we report the failure ourselves, with numbers */
		m->chunks[i] = (void *)__get_free_pages(GFP_ATOMIC | __GFP_ZERO | __GFP_COMP |
							__GFP_NOWARN, VRHP_CHUNK_ORDER);
		if (!m->chunks[i]) {
			pr_err_ratelimited("%s table: btable allocation failed: got %u of %u 4 MiB chunks (order %d, GFP_ATOMIC)\n",
					   t->name, i, n, VRHP_CHUNK_ORDER);
			vrhp_bt_free(m);
			return -ENOMEM;
		}
	}
	m->hdr = m->chunks[0];
	m->base = NULL;
	m->backend = VRHP_BACKEND_BTABLE;
	pr_info_ratelimited("%s table: btable, %u chunks of 4 MiB, %llu + %llu entries\n",
			    t->name, n, t->entries, t->oentries);
	return 0;
}

/* ---------------------------------------------------------------- hugepage */

static void vrhp_hp_release(struct vrhp_mem *m)
{
	if (m->vmapped && m->base)
		vunmap(m->base);
	if (m->pages) {
		unpin_user_pages(m->pages, m->nr_pages - VRHP_PLANTED(LEAKED_PIN));
		kvfree(m->pages);
	}
	kvfree(m->runs);
	m->runs = NULL;
	m->nr_runs = 0;
	m->pages = NULL;
	m->nr_pages = 0;
	m->base = NULL;
	m->vmapped = false;
	m->nr_hpages = 0;
}

static void vrhp_mem_free(struct vrhp_mem *m)
{
	if (m->backend == VRHP_BACKEND_BTABLE)
		vrhp_bt_free(m);
	else if (m->backend == VRHP_BACKEND_HUGEPAGE)
		vrhp_hp_release(m);
	memset(m, 0, sizeof(*m));
}

static int vrhp_seg_validate(struct vrhp_table *t, const struct vrhp_segment *s)
{
	if (s->page_size != VRHP_PAGE_1G && s->page_size != VRHP_PAGE_2M) {
		pr_err_ratelimited("%s segment: page size %llu not 1 GiB or 2 MiB\n", t->name,
				   s->page_size);
		return -EINVAL;
	}
	if (!s->uaddr || s->uaddr & ~PAGE_MASK || s->len & ~PAGE_MASK || !s->len ||
	    s->offset & ~PAGE_MASK ||
	    (s->offset & (s->page_size - 1)) != (s->uaddr & (s->page_size - 1))) {
		pr_err_ratelimited("%s segment: address 0x%llx / length %llu / file offset %llu not aligned to %lu bytes and to the %llu-byte pages\n",
				   t->name, s->uaddr, s->len, s->offset, PAGE_SIZE, s->page_size);
		return -EINVAL;
	}
	/* no longer than the table needs: the length decides what is pinned */
	if (s->len < t->file_bytes || s->len > round_up(t->file_bytes, s->page_size) ||
	    s->len > VRHP_SEG_MAX_LEN) {
		pr_err_ratelimited("%s segment: length %llu outside [%llu, %llu]\n", t->name,
				   s->len, t->file_bytes,
				   min_t(u64, round_up(t->file_bytes, s->page_size),
					 VRHP_SEG_MAX_LEN));
		return -EINVAL;
	}
	if (s->uaddr + s->len < s->uaddr || s->uaddr + s->len > TASK_SIZE_MAX ||
	    !access_ok((void __user *)(unsigned long)s->uaddr, s->len)) {
		pr_err_ratelimited("%s segment: bad user range 0x%llx+%llu\n", t->name, s->uaddr,
				   s->len);
		return -EFAULT;
	}
	if (s->flags) {
		pr_err_ratelimited("%s segment: unknown flags 0x%x\n", t->name, s->flags);
		return -EINVAL;
	}
	return 0;
}

/*
 * Before anything is pinned: the segment is one shared hugetlbfs mapping of the
 * named file at the named offset, so the file keeps the table across modules.
 * Called with the mmap lock held.
 */
static int vrhp_seg_vma_check(struct vrhp_table *t, const struct vrhp_segment *s)
{
	struct vm_area_struct *vma = find_vma(current->mm, s->uaddr);
	char *buf, *path;
	u64 off;
	int err = 0;

	if (!vma || vma->vm_start > s->uaddr || s->uaddr + s->len > vma->vm_end) {
		pr_err_ratelimited("%s segment: 0x%llx+%llu is not inside one mapping\n",
				   t->name, s->uaddr, s->len);
		return -EINVAL;
	}
	if (!is_vm_hugetlb_page(vma) || !vma->vm_file) {
		pr_err_ratelimited("%s segment: 0x%llx is not a hugetlbfs file mapping\n",
				   t->name, s->uaddr);
		return -EINVAL;
	}
	if (!(vma->vm_flags & VM_SHARED)) {
		pr_err_ratelimited("%s segment: 0x%llx is a private mapping: the file would not keep the table\n",
				   t->name, s->uaddr);
		return -EINVAL;
	}
	if (huge_page_size(hstate_vma(vma)) != s->page_size) {
		pr_err_ratelimited("%s segment: the file's pages are %lu bytes, not %llu\n",
				   t->name, huge_page_size(hstate_vma(vma)), s->page_size);
		return -EINVAL;
	}
	off = s->uaddr - vma->vm_start + ((u64)vma->vm_pgoff << PAGE_SHIFT);
	if (off != s->offset) {
		pr_err_ratelimited("%s segment: 0x%llx maps file offset %llu, not %llu\n",
				   t->name, s->uaddr, off, s->offset);
		return -EINVAL;
	}
	buf = kmalloc(VRHP_PATH_MAX, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	path = d_path(&vma->vm_file->f_path, buf, VRHP_PATH_MAX);
	if (IS_ERR(path) || strcmp(path, s->path)) {
		pr_err_ratelimited("%s segment: 0x%llx maps %s, not %s\n", t->name, s->uaddr,
				   IS_ERR(path) ? "a file whose path is too long" : path,
				   s->path);
		err = -EINVAL;
	}
	kfree(buf);
	return err;
}

static int vrhp_run_cmp(const void *a, const void *b)
{
	const struct vrhp_run *x = a, *y = b;

	return x->pfn < y->pfn ? -1 : x->pfn > y->pfn;
}

/* Do two of the runs share a physical page (*pfn: the first)? Sorts the runs. */
static bool vrhp_runs_share(struct vrhp_run *runs, unsigned long n, unsigned long *pfn)
{
	unsigned long i;

	sort(runs, n, sizeof(*runs), vrhp_run_cmp, NULL);
	for (i = 1; i < n; i++) {
		if (runs[i - 1].pfn + runs[i - 1].nr > runs[i].pfn) {
			*pfn = runs[i].pfn;
			return true;
		}
	}
	return false;
}

/* 1 when two tables' memories share a physical page (*pfn: the first), 0, or -ENOMEM. */
static int vrhp_mems_share(const struct vrhp_mem *a, const struct vrhp_mem *b,
			   unsigned long *pfn)
{
	unsigned long n = a->nr_runs + b->nr_runs;
	struct vrhp_run *all;
	bool shared;

	if (!a->nr_runs || !b->nr_runs)
		return 0;
	all = kvmalloc_array(n, sizeof(*all), GFP_KERNEL);
	if (!all)
		return -ENOMEM;
	memcpy(all, a->runs, a->nr_runs * sizeof(*all));
	memcpy(all + a->nr_runs, b->runs, b->nr_runs * sizeof(*all));
	shared = vrhp_runs_share(all, n, pfn);
	kvfree(all);
	return shared;
}

/* Cut the pinned pages into physical runs: every page must be in exactly one. */
static int vrhp_hp_runs(struct vrhp_table *t, struct vrhp_mem *m)
{
	unsigned long i, n = 0, pfn;
	struct vrhp_run *sorted;
	bool shared;

	for (i = 0; i < m->nr_pages; i++)
		if (!i || page_to_pfn(m->pages[i]) != page_to_pfn(m->pages[i - 1]) + 1)
			n++;
	m->runs = kvmalloc_array(n, sizeof(*m->runs), GFP_KERNEL);
	if (!m->runs)
		return -ENOMEM;
	if (VRHP_PLANTED(KMALLOC_OVERRUN)) {	/* one byte past the array, value unchanged */
		u8 *past = (u8 *)m->runs + n * sizeof(*m->runs);

		WRITE_ONCE(*past, READ_ONCE(*past));
	}
	for (i = 0; i < m->nr_pages; i++) {
		pfn = page_to_pfn(m->pages[i]);
		if (!i || pfn != page_to_pfn(m->pages[i - 1]) + 1)
			m->runs[m->nr_runs++] = (struct vrhp_run){ .pfn = pfn, .nr = 0 };
		m->runs[m->nr_runs - 1].nr++;
	}
	m->contiguous = m->nr_runs == 1;
	if (m->contiguous)
		return 0;
	sorted = kvmalloc_array(n, sizeof(*sorted), GFP_KERNEL);
	if (!sorted)
		return -ENOMEM;
	memcpy(sorted, m->runs, n * sizeof(*sorted));
	shared = vrhp_runs_share(sorted, n, &pfn);
	kvfree(sorted);
	if (shared) {
		pr_err_ratelimited("%s segment: physical page 0x%lx is mapped more than once\n",
				   t->name, pfn);
		return -EINVAL;
	}
	return 0;
}

static int vrhp_hp_attach(struct vrhp_table *t, struct vrhp_mem *m, const struct vrhp_segment *s)
{
	unsigned long nr = s->len >> PAGE_SHIFT;
	unsigned long per = s->page_size >> PAGE_SHIFT;
	unsigned long first = (s->uaddr >> PAGE_SHIFT) & (per - 1);
	struct page *prev_head = NULL;
	unsigned long i;
	long pinned;
	int err;

	if (mmap_read_lock_killable(current->mm))
		return -EINTR;
	err = vrhp_seg_vma_check(t, s);
	if (err) {
		mmap_read_unlock(current->mm);
		return err;
	}
	m->pages = kvmalloc_array(nr, sizeof(*m->pages), GFP_KERNEL);
	if (!m->pages) {
		mmap_read_unlock(current->mm);
		return -ENOMEM;
	}
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 5, 0)
	pinned = pin_user_pages(s->uaddr, nr, FOLL_WRITE | FOLL_LONGTERM, m->pages, NULL);
#else
	pinned = pin_user_pages(s->uaddr, nr, FOLL_WRITE | FOLL_LONGTERM, m->pages);
#endif
	mmap_read_unlock(current->mm);
	m->backend = VRHP_BACKEND_HUGEPAGE;
	if (pinned < 0) {
		pr_err_ratelimited("%s segment: pin_user_pages failed: %ld\n", t->name, pinned);
		err = pinned;
		goto fail;
	}
	m->nr_pages = pinned;
	if (pinned != nr) {
		pr_err_ratelimited("%s segment: pinned %ld of %lu pages\n", t->name, pinned, nr);
		err = -EFAULT;
		goto fail;
	}

	/*
	 * Every 4 KiB page must sit in a hugetlb page of the declared size, at the
	 * place its user address says; a new huge page starts at its head.
	 */
	for (i = 0; i < nr; i++) {
		struct page *p = m->pages[i];
		struct page *head = compound_head(p);

		if (head != prev_head) {
			if (!PageHuge(head) || page_size(head) != s->page_size) {
				pr_err_ratelimited("%s segment: page %lu is not in a %llu-byte hugetlb page\n",
						   t->name, i, s->page_size);
				err = -EINVAL;
				goto fail;
			}
			m->nr_hpages++;
			prev_head = head;
		}
		if (page_to_pfn(p) - page_to_pfn(head) != ((first + i) & (per - 1))) {
			pr_err_ratelimited("%s segment: page %lu not linear in its huge page\n",
					   t->name, i);
			err = -EINVAL;
			goto fail;
		}
		if (!(i & 65535))
			cond_resched();
	}
	err = vrhp_hp_runs(t, m);
	if (err)
		goto fail;

	/* page_address() holds only for physically linear memory */
	if (m->nr_hpages == 1 && m->contiguous) {
		m->base = page_address(m->pages[0]);
		m->vmapped = false;
	} else {
		m->base = vmap(m->pages, nr, VM_MAP, PAGE_KERNEL);
		if (!m->base) {
			pr_err_ratelimited("%s segment: vmap of %lu pages failed\n", t->name, nr);
			err = -ENOMEM;
			goto fail;
		}
		m->vmapped = true;
	}
	m->hdr = m->base;
	memset(&m->seg, 0, sizeof(m->seg));
	m->seg.uaddr = s->uaddr;
	m->seg.len = s->len;
	m->seg.page_size = s->page_size;
	m->seg.table = t->id;
	m->seg.nr_hpages = m->nr_hpages;
	m->seg.contiguous = m->contiguous;
	m->seg.vmapped = m->vmapped;
	m->seg.offset = s->offset;
	strscpy(m->seg.path, s->path, sizeof(m->seg.path));
	return 0;

fail:
	vrhp_mem_free(m);
	return err;
}

static void vrhp_table_free(struct vrhp_table *t)
{
	vrhp_mem_free(&t->m);
	t->detached_warned = 0;
	t->ocursor = 0;
	t->olinked = 0;
	t->inserts = t->deletes = t->insert_failures = t->nospc = 0;
}

static void vrhp_free_all(void)
{
	int i;

	for (i = 0; i < VRHP_NR_TABLES; i++)
		vrhp_table_free(&vrhp_tables[i]);
	vrhp_state = VRHP_STATE_UNINIT;
}

/* ---------------------------------------------------------------- HP_CONFIG */

static void vrhp_fault_delay(void)
{
	unsigned int ms = READ_ONCE(fault_cfg_delay_ms);

	if (ms)
		msleep_interruptible(min_t(unsigned int, ms, VRHP_FAULT_DELAY_MAX_MS));
}

/* Tables exist and this call cannot change them: the answer is ALREADY_INITIALISED. */
static bool vrhp_cfg_keeps(u32 state, bool reset)
{
	return state == VRHP_STATE_READY && (!reset || vrhp_mem == VRHP_BACKEND_BTABLE);
}

static void vrhp_report_live(struct vrhp_hp_config *cfg)
{
	u32 i;

	for (i = 0; i < VRHP_NR_TABLES; i++) {
		cfg->tables[i].backend = vrhp_tables[i].m.backend;
		cfg->tables[i].generation = vrhp_tables[i].m.hdr ?
					    vrhp_tables[i].m.hdr->generation : 0;
	}
}

/*
 * Phase 1, before the config lock (pinning takes the mmap lock, which mmap of the
 * map devices holds while it takes the config lock): pin, check and classify each
 * segment into stage[]. Returns 0, -EINVAL when the two tables share memory, or
 * -ENOMEM.
 */
static int vrhp_hp_stage(struct vrhp_hp_config *cfg, const struct vrhp_segment **seg,
			 struct vrhp_mem *stage, int *hdrstate, u64 *linked, int *invalid)
{
	bool reset = cfg->flags & VRHP_CFG_RESET;
	unsigned long pfn = 0;
	int shared;
	u32 i;

	for (i = 0; i < VRHP_NR_TABLES; i++) {
		struct vrhp_table *t = &vrhp_tables[i];
		struct vrhp_table_result *r = &cfg->tables[i];
		int err;

		hdrstate[i] = 0;
		linked[i] = 0;
		if (!seg[i])
			continue;
		err = vrhp_seg_validate(t, seg[i]);
		if (!err) {
			vrhp_called(VRHP_R_HP_PIN);
			err = vrhp_hp_attach(t, &stage[i], seg[i]);
			if (!err)
				vrhp_reached(VRHP_R_HP_PIN);
		} else {
			(*invalid)++;
		}
		if (err) {
			r->err = err;
			r->action = VRHP_ACT_FAILED;
			continue;
		}
		hdrstate[i] = vrhp_hdr_check(t, stage[i].hdr);
		if (!hdrstate[i] && !reset) {
			vrhp_called(VRHP_R_HP_ADOPT);
			hdrstate[i] = vrhp_chains_check(t, &stage[i], &linked[i]);
		}
		if (hdrstate[i] == -ENOMEM) {
			vrhp_mem_free(&stage[i]);
			hdrstate[i] = 0;
			r->err = -ENOMEM;
			r->action = VRHP_ACT_FAILED;
			continue;
		}
		if (hdrstate[i] < 0 && !reset) {
			r->err = hdrstate[i];
			r->action = VRHP_ACT_MISMATCH;
		}
	}
	shared = vrhp_mems_share(&stage[0], &stage[1], &pfn);
	if (shared > 0)
		pr_err_ratelimited("HP_CONFIG: flow and bridge segments share physical page 0x%lx\n",
				   pfn);
	return shared > 0 ? -EINVAL : shared;
}

/* Phase 3, under the config lock: the staged memory becomes the tables. */
static void vrhp_hp_commit(struct vrhp_hp_config *cfg, struct vrhp_mem *stage,
			   const int *hdrstate, const u64 *linked)
{
	bool reset = cfg->flags & VRHP_CFG_RESET;
	u32 i;

	if (vrhp_state == VRHP_STATE_READY) {
		pr_info_ratelimited("HP_CONFIG reset: tearing down tables\n");
		vrhp_free_all();
		vrhp_reached(VRHP_R_HP_RESET);
	}
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		struct vrhp_table *t = &vrhp_tables[i];
		struct vrhp_table_result *r = &cfg->tables[i];

		t->m = stage[i];
		memset(&stage[i], 0, sizeof(stage[i]));
		t->epoch++;
		if (t->m.backend == VRHP_BACKEND_BTABLE) {
			vrhp_hdr_init(t, get_random_u32());
			continue;
		}
		if (hdrstate[i] != 0 || reset) {
			vrhp_hdr_init(t, get_random_u32());
			vrhp_zero_entries(t);
			r->action = VRHP_ACT_FRESH;
			pr_info_ratelimited("%s table: hugepage %s, initialised (%u x %llu MiB pages, %s)\n",
					    t->name, t->m.seg.path, t->m.nr_hpages,
					    t->m.seg.page_size >> 20,
					    t->m.vmapped ? "vmap" : "page_address");
		} else {
			t->olinked = linked[i];
			t->m.hdr->generation++;
			t->m.hdr->instance = get_random_u64();
			t->m.hdr->writer_version = VRHP_VERSION;
			r->action = VRHP_ACT_ADOPTED;
			vrhp_reached(VRHP_R_HP_ADOPT);
			pr_info_ratelimited("%s table: hugepage %s, adopted, generation %llu (%u x %llu MiB pages, %s)\n",
					    t->name, t->m.seg.path, t->m.hdr->generation,
					    t->m.nr_hpages, t->m.seg.page_size >> 20,
					    t->m.vmapped ? "vmap" : "page_address");
		}
	}
	vrhp_report_live(cfg);
	vrhp_state = VRHP_STATE_READY;
	vrhp_reached(VRHP_R_HP_COMMIT);
}

static long vrhp_hp_config(struct vrhp_hp_config __user *uarg)
{
	struct vrhp_hp_config *cfg;
	struct vrhp_mem *stage = NULL;
	const struct vrhp_segment *seg[VRHP_NR_TABLES] = { NULL, NULL };
	int hpok = 0, bt = 0, invalid = 0, mismatch = 0, hdrstate[VRHP_NR_TABLES];
	u64 linked[VRHP_NR_TABLES];
	bool reset;
	long ret = 0;
	u32 i, out;

	cfg = kzalloc(sizeof(*cfg), GFP_KERNEL);
	if (!cfg)
		return -ENOMEM;
	if (copy_from_user(cfg, uarg, sizeof(*cfg))) {
		ret = -EFAULT;
		goto out_free;
	}
	if (cfg->nr_segs > VRHP_MAX_SEGS || (cfg->flags & ~VRHP_CFG_RESET)) {
		ret = -EINVAL;
		goto out_free;
	}
	for (i = 0; i < cfg->nr_segs; i++) {
		struct vrhp_segment *s = &cfg->segs[i];

		if (s->table >= VRHP_NR_TABLES || seg[s->table]) {
			pr_err_ratelimited("HP_CONFIG: segment %u names table %u (unknown or duplicate)\n",
					   i, s->table);
			ret = -EINVAL;
			goto out_free;
		}
		if (strnlen(s->path, VRHP_PATH_MAX) == VRHP_PATH_MAX) {
			pr_err_ratelimited("HP_CONFIG: segment %u path not NUL terminated\n", i);
			ret = -EINVAL;
			goto out_free;
		}
		seg[s->table] = s;
	}
	if (seg[0] && seg[1] && seg[0]->uaddr < seg[1]->uaddr + seg[1]->len &&
	    seg[1]->uaddr < seg[0]->uaddr + seg[0]->len) {
		pr_err_ratelimited("HP_CONFIG: flow and bridge segments overlap\n");
		ret = -EINVAL;
		goto out_free;
	}
	reset = cfg->flags & VRHP_CFG_RESET;
	memset(cfg->tables, 0, sizeof(cfg->tables));
	/* tables stay READY until rmmod: a call that cannot change them pins nothing */
	if (vrhp_cfg_keeps(READ_ONCE(vrhp_state), reset))
		memset(seg, 0, sizeof(seg));
	stage = kcalloc(VRHP_NR_TABLES, sizeof(*stage), GFP_KERNEL);
	if (!stage) {
		ret = -ENOMEM;
		goto out_free;
	}

	ret = vrhp_hp_stage(cfg, seg, stage, hdrstate, linked, &invalid);
	if (ret)
		goto out_release;
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		if (stage[i].backend == VRHP_BACKEND_HUGEPAGE)
			hpok++;
		if (cfg->tables[i].action == VRHP_ACT_MISMATCH)
			mismatch++;
	}

	if (down_write_killable(&vrhp_cfg_sem)) {
		ret = -EINTR;
		goto out_release;
	}
	vrhp_reached(VRHP_R_HP_CONFIG);
	vrhp_fault_delay();
	if (vrhp_cfg_keeps(vrhp_state, reset)) {
		out = VRHP_OUT_ALREADY_INITIALISED;
		memset(cfg->tables, 0, sizeof(cfg->tables));
		vrhp_report_live(cfg);
		goto done;
	}
	vrhp_called(VRHP_R_HP_COMMIT);
	if (vrhp_state == VRHP_STATE_READY) {
		vrhp_called(VRHP_R_HP_RESET);
		for (i = 0; i < VRHP_NR_TABLES; i++) {
			if (atomic_read(&vrhp_tables[i].mmap_count)) {
				pr_err_ratelimited("HP_CONFIG reset: %s table is mmapped\n",
						   vrhp_tables[i].name);
				ret = -EBUSY;
				goto unlock;
			}
		}
	}
	/* from here on a refusal leaves the tables that exist as they are */
	if (mismatch) {
		out = VRHP_OUT_LAYOUT_MISMATCH;
		goto refused;
	}

	/* phase 2: fallback for tables without huge pages */
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		struct vrhp_table *t = &vrhp_tables[i];

		if (stage[i].backend == VRHP_BACKEND_HUGEPAGE)
			continue;
		if (!seg[i])
			pr_warn_ratelimited("%s table: the agent sent no huge-page segment\n",
					    t->name);
		else
			pr_warn_ratelimited("%s table: huge-page segment unusable (%d)\n", t->name,
					    cfg->tables[i].err);
		if (!fallback || VRHP_PLANTED(NO_FALLBACK)) {
			pr_err_ratelimited("%s table: no usable huge pages and fallback=0: refusing\n",
					   t->name);
			out = VRHP_OUT_REFUSED;
			goto refused;
		}
		pr_warn_ratelimited("%s table: falling back to btable\n", t->name);
		if (vrhp_bt_alloc(t, &stage[i])) {
			out = VRHP_OUT_MEM_FAILURE;
			goto refused;
		}
		cfg->tables[i].action = VRHP_ACT_FALLBACK;
		bt++;
	}

	vrhp_hp_commit(cfg, stage, hdrstate, linked);
	if (!bt)
		out = VRHP_OUT_SUCCESS;
	else if (hpok)
		out = VRHP_OUT_PARTIAL;
	else if (invalid)
		out = VRHP_OUT_INVALID_ARG_FALLBACK_IN_USE;
	else
		out = VRHP_OUT_HUGEPAGE_FAILURE_FALLBACK_IN_USE;
	goto done;

refused:
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		if (cfg->tables[i].action == VRHP_ACT_FALLBACK)
			cfg->tables[i].action = VRHP_ACT_NONE;
		cfg->tables[i].backend = VRHP_BACKEND_NONE;
	}
	if (vrhp_state == VRHP_STATE_READY) {
		vrhp_report_live(cfg);
		pr_warn_ratelimited("HP_CONFIG reset refused: the tables stay as they were\n");
	}
done:
	cfg->outcome = out;
	vrhp_last_outcome = out;
	if (out == VRHP_OUT_SUCCESS || out == VRHP_OUT_ALREADY_INITIALISED)
		pr_info_ratelimited("HP_CONFIG: %s\n", vrhp_outcome_name(out));
	else
		pr_warn_ratelimited("HP_CONFIG: %s\n", vrhp_outcome_name(out));
unlock:
	up_write(&vrhp_cfg_sem);
out_release:
	for (i = 0; i < VRHP_NR_TABLES; i++)
		vrhp_mem_free(&stage[i]);
	if (!ret && copy_to_user(uarg, cfg, sizeof(*cfg)))
		ret = -EFAULT;
out_free:
	kfree(stage);
	kfree(cfg);
	return ret;
}

/* ---------------------------------------------------------------- ops */

static int vrhp_key_check(const u8 *pad, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (pad[i])
			return -EINVAL;
	return 0;
}

static int vrhp_flow_key_check(const struct vrhp_flow_key *k)
{
	if (k->family != VRHP_AF_INET && k->family != VRHP_AF_INET6)
		return -EINVAL;
	if (k->family == VRHP_AF_INET &&
	    (vrhp_key_check(k->src + 4, 12) || vrhp_key_check(k->dst + 4, 12)))
		return -EINVAL;
	return vrhp_key_check(k->pad, sizeof(k->pad));
}

/* Returns the table, locked, with cfg read-held; or ERR_PTR. */
static struct vrhp_table *vrhp_get_table(u32 id)
{
	struct vrhp_table *t;

	if (id >= VRHP_NR_TABLES)
		return ERR_PTR(-EINVAL);
	if (down_read_killable(&vrhp_cfg_sem))
		return ERR_PTR(-EINTR);
	t = &vrhp_tables[id];
	if (t->m.backend == VRHP_BACKEND_NONE) {
		up_read(&vrhp_cfg_sem);
		return ERR_PTR(-ENODEV);
	}
	if (mutex_lock_killable(&t->lock)) {
		up_read(&vrhp_cfg_sem);
		return ERR_PTR(-EINTR);
	}
	return t;
}

static void vrhp_put_table(struct vrhp_table *t)
{
	mutex_unlock(&t->lock);
	up_read(&vrhp_cfg_sem);
}

static long vrhp_flow_op(unsigned int cmd, void __user *uarg)
{
	struct vrhp_flow_req req;
	struct vrhp_flow_entry *e;
	struct vrhp_table *t;
	u64 idx;
	int err;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (vrhp_flow_key_check(&req.key))
		return -EINVAL;
	t = vrhp_get_table(VRHP_TABLE_FLOW);
	if (IS_ERR(t))
		return PTR_ERR(t);
	vrhp_reached(vrhp_reach_of(cmd));
	switch (cmd) {
	case VRHP_IOC_FLOW_ADD:
		err = vrhp_insert(t, &req.key, &idx);
		if (err) {
			t->insert_failures++;
			if (err == -ENOSPC)
				t->nospc++;
			break;
		}
		e = vrhp_entry(t, idx);
		e->action = req.action;
		e->last_used = ktime_get_real_ns();
		t->inserts++;
		t->last_added = idx + 1;
		break;
	case VRHP_IOC_FLOW_DEL:
		err = vrhp_delete(t, &req.key);
		if (!err)
			t->deletes++;
		break;
	default:
		err = vrhp_lookup(t, &req.key, &idx);
		break;
	}
	if (!err && cmd != VRHP_IOC_FLOW_DEL) {
		e = vrhp_entry(t, idx);
		req.action = e->action;
		req.index = idx;
		req.flags = READ_ONCE(e->flags);
		req.packets = e->packets;
		req.bytes = e->bytes;
		req.last_used = e->last_used;
	}
	vrhp_put_table(t);
	if (!err && cmd != VRHP_IOC_FLOW_DEL && copy_to_user(uarg, &req, sizeof(req)))
		return -EFAULT;
	return err;
}

static long vrhp_bridge_op(unsigned int cmd, void __user *uarg)
{
	struct vrhp_bridge_req req;
	struct vrhp_bridge_entry *e;
	struct vrhp_table *t;
	u64 idx;
	int err;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (vrhp_key_check(req.key.pad, sizeof(req.key.pad)))
		return -EINVAL;
	t = vrhp_get_table(VRHP_TABLE_BRIDGE);
	if (IS_ERR(t))
		return PTR_ERR(t);
	vrhp_reached(vrhp_reach_of(cmd));
	switch (cmd) {
	case VRHP_IOC_BRIDGE_ADD:
		err = vrhp_insert(t, &req.key, &idx);
		if (err) {
			t->insert_failures++;
			if (err == -ENOSPC)
				t->nospc++;
			break;
		}
		e = vrhp_entry(t, idx);
		e->nexthop = req.nexthop;
		e->label = req.label;
		e->last_used = ktime_get_real_ns();
		t->inserts++;
		break;
	case VRHP_IOC_BRIDGE_DEL:
		err = vrhp_delete(t, &req.key);
		if (!err)
			t->deletes++;
		break;
	default:
		err = vrhp_lookup(t, &req.key, &idx);
		break;
	}
	if (!err && cmd != VRHP_IOC_BRIDGE_DEL) {
		e = vrhp_entry(t, idx);
		req.nexthop = e->nexthop;
		req.label = e->label;
		req.index = idx;
		req.flags = READ_ONCE(e->flags);
		req.last_used = e->last_used;
		req.packets = e->packets;
	}
	vrhp_put_table(t);
	if (!err && cmd != VRHP_IOC_BRIDGE_DEL && copy_to_user(uarg, &req, sizeof(req)))
		return -EFAULT;
	return err;
}

static u64 vrhp_mix(u64 *s)
{
	u64 z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Insert the next pseudo-random key of f's sequence. */
static int vrhp_fill_one(struct vrhp_table *t, struct vrhp_fill *f, u64 *s, u64 now)
{
	u64 r1 = vrhp_mix(s), r2 = vrhp_mix(s), r3 = vrhp_mix(s);
	u64 age = (r3 >> 40) % 3600;
	u64 idx;
	int err;

	if (f->table == VRHP_TABLE_FLOW) {
		struct vrhp_flow_key k = {};
		struct vrhp_flow_entry *e;

		k.vrf = r3 & 0xf;
		k.proto = (r3 & 0x10) ? 17 : 6;
		k.sport = r1 >> 48;
		k.dport = r2 >> 48;
		if ((r3 & 0x300) == 0) {
			u64 r4 = vrhp_mix(s), r5 = vrhp_mix(s);

			k.family = VRHP_AF_INET6;
			memcpy(k.src, &r1, 8);
			memcpy(k.src + 8, &r4, 8);
			memcpy(k.dst, &r2, 8);
			memcpy(k.dst + 8, &r5, 8);
		} else {
			k.family = VRHP_AF_INET;
			memcpy(k.src, &r1, 4);
			memcpy(k.dst, &r2, 4);
		}
		err = vrhp_insert(t, &k, &idx);
		if (!err) {
			e = vrhp_entry(t, idx);
			e->action = 1 + (r3 >> 60);
			e->packets = (r2 >> 8) & 0xffff;
			e->bytes = e->packets * 512;
			e->last_used = now - age * NSEC_PER_SEC;
		} else if (f->first_fail_index == ~0ULL) {
			memcpy(f->first_fail_key, &k, sizeof(k));
		}
	} else {
		struct vrhp_bridge_key k = {};
		struct vrhp_bridge_entry *e;

		k.vrf = r3 & 0x3f;
		memcpy(k.mac, &r1, 6);
		k.mac[0] &= 0xfe;
		err = vrhp_insert(t, &k, &idx);
		if (!err) {
			e = vrhp_entry(t, idx);
			e->nexthop = r2 & 0xffff;
			e->label = (r2 >> 16) & 0xfffff;
			e->last_used = now - age * NSEC_PER_SEC;
		} else if (f->first_fail_index == ~0ULL) {
			memcpy(f->first_fail_key, &k, sizeof(k));
		}
	}
	return err;
}

/*
 * FILL takes and drops the locks every VRHP_FILL_BATCH keys, so INFO, STATS and
 * HP_CONFIG get in between; it asks for at most twice the table's entries, and
 * stops with -ESTALE when a reset gave the table new memory in between.
 */
static long vrhp_fill(void __user *uarg)
{
	struct vrhp_fill f;
	struct vrhp_table *t;
	u64 i = 0, s, now, start, epoch = 0;
	long ret = 0;

	if (copy_from_user(&f, uarg, sizeof(f)))
		return -EFAULT;
	if (f.table >= VRHP_NR_TABLES)
		return -EINVAL;
	t = &vrhp_tables[f.table];
	if (f.count > 2 * (t->entries + t->oentries)) {
		pr_err_ratelimited("FILL: count %llu is more than twice the %s table's %llu entries\n",
				   f.count, t->name, t->entries + t->oentries);
		return -EINVAL;
	}
	f.inserted = f.failed = 0;
	memset(f.first_fail_key, 0, sizeof(f.first_fail_key));
	f.first_fail_index = ~0ULL;
	f.first_fail_err = 0;
	s = f.seed;
	start = ktime_get_ns();
	now = ktime_get_real_ns();
	while (i < f.count && !ret) {
		u64 end = min_t(u64, f.count, i + VRHP_FILL_BATCH);

		t = vrhp_get_table(f.table);
		if (IS_ERR(t)) {
			ret = PTR_ERR(t);
			break;
		}
		if (!i) {
			epoch = t->epoch;
			vrhp_reached(VRHP_R_FILL);
		}
		if (t->epoch != epoch) {
			vrhp_put_table(t);
			ret = -ESTALE;
			break;
		}
		for (; i < end; i++) {
			int err = vrhp_fill_one(t, &f, &s, now);

			if (!err) {
				f.inserted++;
				t->inserts++;
				continue;
			}
			f.failed++;
			t->insert_failures++;
			if (err == -ENOSPC)
				t->nospc++;
			if (f.first_fail_index == ~0ULL) {
				f.first_fail_index = i;
				f.first_fail_err = err;
			}
			if (err == -EUCLEAN) {
				ret = err;
				break;
			}
		}
		vrhp_put_table(t);
		cond_resched();
		if (!ret && fatal_signal_pending(current))
			ret = -EINTR;
	}
	f.elapsed_ns = ktime_get_ns() - start;
	if (copy_to_user(uarg, &f, sizeof(f)))
		return -EFAULT;
	return ret;
}

static long vrhp_stats(void __user *uarg)
{
	struct vrhp_stats st;
	struct vrhp_table *t;
	unsigned long *seen;
	long ret = 0;
	u64 i, b;

	if (copy_from_user(&st, uarg, sizeof(st)))
		return -EFAULT;
	if (st.table >= VRHP_NR_TABLES)
		return -EINVAL;
	seen = vrhp_seen_alloc(&vrhp_tables[st.table]);
	if (!seen)
		return -ENOMEM;
	t = vrhp_get_table(st.table);
	if (IS_ERR(t)) {
		kvfree(seen);
		return PTR_ERR(t);
	}
	vrhp_reached(VRHP_R_STATS);
	b = st.table;
	memset(&st, 0, sizeof(st));
	st.table = b;
	st.entries = t->entries;
	st.oentries = t->oentries;
	for (i = 0; i < t->entries + t->oentries; i++) {
		if (READ_ONCE(vrhp_eh(t, i)->flags) & VRHP_EF_VALID) {
			if (i < t->entries)
				st.main_used++;
			else
				st.oflow_used++;
		}
		if (!(i & 65535))
			cond_resched();
	}
	/* each overflow entry is visited once over all chains: O(entries) in all */
	for (b = 0; b < t->nbuckets; b++) {
		long len = vrhp_chain_walk(t, &t->m, b, seen, false);

		if (len < 0) {
			pr_warn_ratelimited("%s table: STATS: overflow chain of bucket %llu is corrupt (a cycle, a merge or a next out of range)\n",
					    t->name, b);
			ret = len;
			break;
		}
		st.longest_chain = max_t(u64, st.longest_chain, len);
		if (!(b & 4095))
			cond_resched();
	}
	st.used = st.main_used + st.oflow_used;
	st.inserts = t->inserts;
	st.deletes = t->deletes;
	st.insert_failures = t->insert_failures;
	st.nospc_failures = t->nospc;
	vrhp_put_table(t);
	kvfree(seen);
	if (ret)
		return ret;
	if (copy_to_user(uarg, &st, sizeof(st)))
		return -EFAULT;
	return 0;
}

static long vrhp_pattern(void __user *uarg)
{
	struct vrhp_pattern p;
	struct vrhp_table *t;
	u64 off, start, j;
	long err = 0;

	if (copy_from_user(&p, uarg, sizeof(p)))
		return -EFAULT;
	if (p.pad)
		return -EINVAL;
	t = vrhp_get_table(p.table);
	if (IS_ERR(t))
		return PTR_ERR(t);
	vrhp_reached(VRHP_R_PATTERN);
	start = ktime_get_ns();
	for (off = 0; off < t->table_bytes; ) {
		u64 a = VRHP_HDR_SIZE + off;
		u64 len = min_t(u64, t->table_bytes - off,
				VRHP_CHUNK_SIZE - (a & (VRHP_CHUNK_SIZE - 1)));
		u64 *w = t->m.base ? t->m.base + a :
			 t->m.chunks[a >> 22] + (a & (VRHP_CHUNK_SIZE - 1));

		if (!p.seed)
			memset(w, 0, len);
		else
			for (j = 0; j < len / 8; j++)
				w[j] = VRHP_PATTERN_WORD(p.seed, off + j * 8);
		off += len;
		cond_resched();
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
	}
	/* entries are zero or garbage now: no chain state survives */
	t->ocursor = 0;
	t->olinked = p.seed ? t->oentries : 0;
	p.bytes = off;
	p.elapsed_ns = ktime_get_ns() - start;
	vrhp_put_table(t);
	pr_info_ratelimited("%s table: %s %llu bytes through the module's mapping\n", t->name,
			    p.seed ? "pattern written over" : "zeroed", off);
	if (err)
		return err;
	if (copy_to_user(uarg, &p, sizeof(p)))
		return -EFAULT;
	return 0;
}

/* Does the hugetlbfs file still hold the pages this table pinned? */
static bool vrhp_detached(struct vrhp_table *t)
{
	unsigned long i;
	bool gone = false;

	if (t->m.backend != VRHP_BACKEND_HUGEPAGE || !t->m.pages)
		return false;
	/* stepping by a huge page from the first 4 KiB page visits each huge page */
	for (i = 0; i < t->m.nr_pages && !gone; i += t->m.seg.page_size >> PAGE_SHIFT)
		gone = !READ_ONCE(compound_head(t->m.pages[i])->mapping);
	if (!gone)
		gone = !READ_ONCE(compound_head(t->m.pages[t->m.nr_pages - 1])->mapping);
	if (gone && !xchg(&t->detached_warned, 1))
		pr_warn_ratelimited("%s table: hugetlbfs file %s no longer holds the pinned pages (deleted or truncated); keeping the pinned memory\n",
				    t->name, t->m.seg.path);
	return gone;
}

static long vrhp_info(void __user *uarg)
{
	struct vrhp_info *inf;
	u32 i, n = 0;
	long ret = 0;

	inf = kzalloc(sizeof(*inf), GFP_KERNEL);
	if (!inf)
		return -ENOMEM;
	inf->abi_version = VRHP_ABI_VERSION;
	inf->module_version = VRHP_VERSION;
	inf->layout_version = VRHP_LAYOUT;
	inf->mem = vrhp_mem;
	inf->fallback = fallback;
	strscpy(inf->version_tag, version_tag ? version_tag : "", sizeof(inf->version_tag));
	down_read(&vrhp_cfg_sem);
	vrhp_reached(VRHP_R_INFO);
	inf->state = vrhp_state;
	inf->last_outcome = vrhp_last_outcome;
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		struct vrhp_table *t = &vrhp_tables[i];
		struct vrhp_table_info *ti = &inf->tables[i];

		ti->entries = t->entries;
		ti->oentries = t->oentries;
		ti->table_bytes = t->table_bytes;
		ti->file_bytes = t->file_bytes;
		ti->entry_size = t->esz;
		ti->backend = t->m.backend;
		if (t->m.hdr) {
			ti->generation = t->m.hdr->generation;
			ti->instance = t->m.hdr->instance;
			ti->hash_seed = t->m.hdr->hash_seed;
		}
		if (fault_zero_size)
			ti->entries = ti->oentries = ti->table_bytes = ti->file_bytes = 0;
		if (t->m.backend == VRHP_BACKEND_BTABLE) {
			ti->nr_chunks = t->m.nr_chunks;
		} else if (t->m.backend == VRHP_BACKEND_HUGEPAGE) {
			ti->nr_chunks = t->m.nr_hpages;
			inf->segs[n] = t->m.seg;
			inf->segs[n++].detached = vrhp_detached(t);
		}
	}
	inf->nr_segs = n;
	up_read(&vrhp_cfg_sem);
	if (copy_to_user(uarg, inf, sizeof(*inf)))
		ret = -EFAULT;
	kfree(inf);
	return ret;
}

static long vrhp_ctl_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	enum vrhp_reach_id id = vrhp_reach_of(cmd);

	if (!capable(CAP_SYS_ADMIN) && !capable(CAP_NET_ADMIN))
		return -EPERM;
	if (id < VRHP_R_NR)
		vrhp_called(id);
	switch (cmd) {
	case VRHP_IOC_INFO:
		return vrhp_info(uarg);
	case VRHP_IOC_HP_CONFIG:
		if (vrhp_mem != VRHP_BACKEND_HUGEPAGE) {
			struct vrhp_hp_config __user *u = uarg;
			u32 o = VRHP_OUT_ALREADY_INITIALISED;

			return put_user(o, &u->outcome);
		}
		return vrhp_hp_config(uarg);
	case VRHP_IOC_FLOW_ADD:
	case VRHP_IOC_FLOW_DEL:
	case VRHP_IOC_FLOW_GET:
		return vrhp_flow_op(cmd, uarg);
	case VRHP_IOC_BRIDGE_ADD:
	case VRHP_IOC_BRIDGE_DEL:
	case VRHP_IOC_BRIDGE_GET:
		return vrhp_bridge_op(cmd, uarg);
	case VRHP_IOC_FILL:
		return vrhp_fill(uarg);
	case VRHP_IOC_STATS:
		return vrhp_stats(uarg);
	case VRHP_IOC_PATTERN:
		return vrhp_pattern(uarg);
	default:
		return -ENOTTY;
	}
}

/* ---------------------------------------------------------------- mmap devices */

static struct miscdevice vrhp_flow_dev, vrhp_bridge_dev;

static void vrhp_vm_open(struct vm_area_struct *vma)
{
	struct vrhp_table *t = vma->vm_private_data;

	atomic_inc(&t->mmap_count);
}

static void vrhp_vm_close(struct vm_area_struct *vma)
{
	struct vrhp_table *t = vma->vm_private_data;

	atomic_dec(&t->mmap_count);
}

static const struct vm_operations_struct vrhp_vm_ops = {
	.open = vrhp_vm_open,
	.close = vrhp_vm_close,
};

static int vrhp_map_open(struct inode *inode, struct file *file)
{
	if (!capable(CAP_SYS_ADMIN) && !capable(CAP_NET_ADMIN))
		return -EPERM;
	if (file->f_mode & FMODE_WRITE)
		return -EACCES;
	return 0;
}

static int vrhp_map_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct miscdevice *md = file->private_data;
	struct vrhp_table *t;
	unsigned long size = vma->vm_end - vma->vm_start;
	unsigned long off = 0;
	int err = 0;

	t = &vrhp_tables[md == &vrhp_bridge_dev ? VRHP_TABLE_BRIDGE : VRHP_TABLE_FLOW];
	vrhp_called(VRHP_R_MMAP);
	/* an fd carries its opener's rights: whoever holds one opened with them may map */
	if (!file_ns_capable(file, &init_user_ns, CAP_NET_ADMIN) &&
	    !file_ns_capable(file, &init_user_ns, CAP_SYS_ADMIN))
		return -EPERM;
	if (vma->vm_flags & VM_WRITE)
		return -EPERM;
	if (vma->vm_pgoff)
		return -EINVAL;
	down_read(&vrhp_cfg_sem);
	if (t->m.backend != VRHP_BACKEND_BTABLE) {
		err = -ENODEV;
		goto out;
	}
	if (size > PAGE_ALIGN(t->file_bytes)) {
		err = -EINVAL;
		goto out;
	}
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_clear(vma, VM_MAYWRITE);
	vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
#else
	vma->vm_flags &= ~VM_MAYWRITE;
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
#endif
	while (off < size) {
		unsigned long len = min_t(unsigned long, VRHP_CHUNK_SIZE, size - off);
		void *chunk = t->m.chunks[off / VRHP_CHUNK_SIZE];

		err = remap_pfn_range(vma, vma->vm_start + off, page_to_pfn(virt_to_page(chunk)),
				      len, vma->vm_page_prot);
		if (err)
			goto out;
		off += len;
	}
	vma->vm_private_data = t;
	vma->vm_ops = &vrhp_vm_ops;
	atomic_inc(&t->mmap_count);
	vrhp_reached(VRHP_R_MMAP);
out:
	up_read(&vrhp_cfg_sem);
	return err;
}

static const struct file_operations vrhp_ctl_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = vrhp_ctl_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static const struct file_operations vrhp_map_fops = {
	.owner = THIS_MODULE,
	.open = vrhp_map_open,
	.mmap = vrhp_map_mmap,
	.llseek = noop_llseek,
};

static struct miscdevice vrhp_ctl_dev = {
	.minor = MISC_DYNAMIC_MINOR, .name = "vrhp", .fops = &vrhp_ctl_fops, .mode = 0600,
};

static struct miscdevice vrhp_flow_dev = {
	.minor = MISC_DYNAMIC_MINOR, .name = "vrhp_flow", .fops = &vrhp_map_fops, .mode = 0400,
};

static struct miscdevice vrhp_bridge_dev = {
	.minor = MISC_DYNAMIC_MINOR, .name = "vrhp_bridge", .fops = &vrhp_map_fops,
	.mode = 0400,
};

/* ---------------------------------------------------------------- init/exit */

static int __init vrhp_init(void)
{
	struct vrhp_table *f = &vrhp_tables[VRHP_TABLE_FLOW];
	struct vrhp_table *b = &vrhp_tables[VRHP_TABLE_BRIDGE];
	int err, i;

	if (mem && !strcmp(mem, "btable")) {
		vrhp_mem = VRHP_BACKEND_BTABLE;
	} else if (mem && !strcmp(mem, "hugepage")) {
		vrhp_mem = VRHP_BACKEND_HUGEPAGE;
	} else {
		pr_err("mem=%s invalid: must be btable or hugepage\n", mem ? mem : "(null)");
		return -EINVAL;
	}

	f->name = "flow";
	f->id = VRHP_TABLE_FLOW;
	f->esz = sizeof(struct vrhp_flow_entry);
	f->koff = offsetof(struct vrhp_flow_entry, key);
	f->ksz = sizeof(struct vrhp_flow_key);
	b->name = "bridge";
	b->id = VRHP_TABLE_BRIDGE;
	b->esz = sizeof(struct vrhp_bridge_entry);
	b->koff = offsetof(struct vrhp_bridge_entry, key);
	b->ksz = sizeof(struct vrhp_bridge_key);
	BUILD_BUG_ON(sizeof(struct vrhp_flow_key) % 4 || sizeof(struct vrhp_bridge_key) % 4);
	BUILD_BUG_ON(VRHP_HDR_SIZE % VRHP_FLOW_ENTRY_SIZE);
	BUILD_BUG_ON(sizeof(struct vrhp_flow_key) > sizeof_field(struct vrhp_fill, first_fail_key));

	err = vrhp_compute(f, "flow_entries", flow_entries, "oflow_entries", oflow_entries);
	if (err)
		return err;
	err = vrhp_compute(b, "bridge_entries", bridge_entries, "bridge_oentries",
			   bridge_oentries);
	if (err)
		return err;
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		mutex_init(&vrhp_tables[i].lock);
		atomic_set(&vrhp_tables[i].mmap_count, 0);
	}

	if (vrhp_mem == VRHP_BACKEND_BTABLE) {
		for (i = 0; i < VRHP_NR_TABLES; i++) {
			err = vrhp_bt_alloc(&vrhp_tables[i], &vrhp_tables[i].m);
			if (err) {
				vrhp_free_all();
				return err;
			}
			vrhp_hdr_init(&vrhp_tables[i], get_random_u32());
		}
		vrhp_state = VRHP_STATE_READY;
	}

	err = misc_register(&vrhp_ctl_dev);
	if (err)
		goto fail;
	err = misc_register(&vrhp_flow_dev);
	if (err)
		goto fail_ctl;
	err = misc_register(&vrhp_bridge_dev);
	if (err)
		goto fail_flow;
	pr_info("loaded: version %d layout %d tag '%s' mem=%s fallback=%d flow %llu+%llu (%llu B) bridge %llu+%llu (%llu B)%s\n",
		VRHP_VERSION, VRHP_LAYOUT, version_tag ? version_tag : "", mem, fallback,
		f->entries, f->oentries, f->table_bytes, b->entries, b->oentries,
		b->table_bytes, VRHP_PLANTED_NOTE);
	return 0;

fail_flow:
	misc_deregister(&vrhp_flow_dev);
fail_ctl:
	misc_deregister(&vrhp_ctl_dev);
fail:
	vrhp_free_all();
	return err;
}

/* A planted defect: the last flow added never reaches the table the next module adopts. */
static void vrhp_planted_lose_last_add(void)
{
	struct vrhp_table *t = &vrhp_tables[VRHP_TABLE_FLOW];

	if (t->m.backend != VRHP_BACKEND_NONE && t->last_added)
		vrhp_eh(t, t->last_added - 1)->flags &= ~VRHP_EF_VALID;
}

static void __exit vrhp_exit(void)
{
	misc_deregister(&vrhp_bridge_dev);
	misc_deregister(&vrhp_flow_dev);
	misc_deregister(&vrhp_ctl_dev);
	down_write(&vrhp_cfg_sem);
	if (VRHP_PLANTED(LOSES_LAST_ADD))
		vrhp_planted_lose_last_add();
	vrhp_free_all();
	up_write(&vrhp_cfg_sem);
	WARN_ON(VRHP_PLANTED(WARN_IN_RMMOD));
	pr_info("unloaded\n");
}

module_init(vrhp_init);
module_exit(vrhp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Model of vRouter flow/bridge table memory on huge pages");
MODULE_VERSION(__stringify(VRHP_VERSION) "." __stringify(VRHP_LAYOUT));
#ifdef VRHP_DEFECT
MODULE_INFO(planted_defect, __stringify(VRHP_DEFECT));
#endif
