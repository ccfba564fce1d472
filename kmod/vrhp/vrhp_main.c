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

#include "vrhp_uapi.h"

#ifndef VRHP_VERSION
#define VRHP_VERSION 1
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

struct vrhp_ehdr {
	u32 flags;
	u32 next;
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

	u32 backend;
	struct vrhp_table_hdr *hdr;
	void *base;		/* hugepage: linear kernel address of the header */
	void **chunks;		/* btable */
	u32 nr_chunks;

	struct page **pages;	/* hugepage: pinned small pages */
	unsigned long nr_pages;
	bool vmapped;
	bool contiguous;
	u32 nr_hpages;
	struct vrhp_seg_info seg;

	int detached_warned;	/* the hugetlbfs file let go of the pinned pages */

	u64 ocursor;
	u64 olinked;		/* overflow entries linked into chains (module-owned bit) */
	struct mutex lock;	/* entries and counters */
	atomic_t mmap_count;
	u64 inserts, deletes, insert_failures, nospc;
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

static void *vrhp_entry(struct vrhp_table *t, u64 idx)
{
	u64 off = VRHP_HDR_SIZE + idx * t->esz;

	if (t->base)
		return t->base + off;
	return t->chunks[off >> 22] + (off & (VRHP_CHUNK_SIZE - 1));
}

static inline struct vrhp_ehdr *vrhp_eh(struct vrhp_table *t, u64 idx)
{
	return vrhp_entry(t, idx);
}

static u64 vrhp_bucket(struct vrhp_table *t, const void *key)
{
	return jhash2(key, t->ksz / 4, t->hdr->hash_seed) % t->nbuckets;
}

/* next overflow entry index (absolute) or ~0 on end / corruption */
static u64 vrhp_next(struct vrhp_table *t, u32 next)
{
	if (!next || next > t->oentries)
		return ~0ULL;
	return t->entries + next - 1;
}

static bool vrhp_key_eq(struct vrhp_table *t, u64 idx, const void *key)
{
	struct vrhp_ehdr *eh = vrhp_eh(t, idx);

	return (READ_ONCE(eh->flags) & VRHP_EF_VALID) &&
	       !memcmp((char *)eh + t->koff, key, t->ksz);
}

static int vrhp_lookup(struct vrhp_table *t, const void *key, u64 *idx)
{
	u64 b = vrhp_bucket(t, key) * VRHP_BUCKET_SIZE;
	u64 i, n, steps = 0;

	for (i = 0; i < VRHP_BUCKET_SIZE; i++) {
		if (vrhp_key_eq(t, b + i, key)) {
			*idx = b + i;
			return 0;
		}
	}
	n = vrhp_next(t, READ_ONCE(vrhp_eh(t, b + VRHP_BUCKET_SIZE - 1)->next));
	while (n != ~0ULL && steps++ <= t->oentries) {
		if (vrhp_key_eq(t, n, key)) {
			*idx = n;
			return 0;
		}
		n = vrhp_next(t, READ_ONCE(vrhp_eh(t, n)->next));
	}
	return -ENOENT;
}

/* Insert key; returns the entry index with the key written and VALID set. */
static int vrhp_insert(struct vrhp_table *t, const void *key, u64 *idx)
{
	u64 b = vrhp_bucket(t, key) * VRHP_BUCKET_SIZE;
	struct vrhp_ehdr *tail = vrhp_eh(t, b + VRHP_BUCKET_SIZE - 1);
	struct vrhp_ehdr *eh;
	u64 i, n, slot = ~0ULL, steps = 0;

	if (!vrhp_lookup(t, key, &n))
		return -EEXIST;

	for (i = 0; i < VRHP_BUCKET_SIZE; i++) {
		if (!(READ_ONCE(vrhp_eh(t, b + i)->flags) & VRHP_EF_VALID)) {
			slot = b + i;
			goto found;
		}
	}
	/* reuse an invalidated entry already in this bucket's chain */
	n = vrhp_next(t, READ_ONCE(tail->next));
	while (n != ~0ULL && steps++ <= t->oentries) {
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

static void vrhp_remove(struct vrhp_table *t, u64 idx)
{
	struct vrhp_ehdr *eh = vrhp_eh(t, idx);

	WRITE_ONCE(eh->flags, READ_ONCE(eh->flags) & ~VRHP_EF_VALID);
	smp_wmb();
	memset((char *)eh + sizeof(*eh), 0, t->esz - sizeof(*eh));
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
	t->oentries = o;
	t->nbuckets = main / VRHP_BUCKET_SIZE;
	t->table_bytes = bytes;
	t->file_bytes = file;
	return 0;
}

/* ---------------------------------------------------------------- headers */

static void vrhp_hdr_init(struct vrhp_table *t, u32 seed)
{
	struct vrhp_table_hdr *h = t->hdr;

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
		pr_err("%s table: file header " #field " %llu, module expects %llu: layout mismatch\n", \
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

		memset(t->base + VRHP_HDR_SIZE + off, 0, len);
		cond_resched();
	}
}

/* ---------------------------------------------------------------- btable */

static void vrhp_bt_free(struct vrhp_table *t)
{
	u32 i;

	if (!t->chunks)
		return;
	for (i = 0; i < t->nr_chunks; i++)
		if (t->chunks[i])
			free_pages((unsigned long)t->chunks[i], VRHP_CHUNK_ORDER);
	kfree(t->chunks);
	t->chunks = NULL;
	t->nr_chunks = 0;
}

static int vrhp_bt_alloc(struct vrhp_table *t)
{
	u32 n = DIV_ROUND_UP(t->file_bytes, VRHP_CHUNK_SIZE);
	u32 i;

	t->chunks = kcalloc(n, sizeof(*t->chunks), GFP_KERNEL);
	if (!t->chunks)
		return -ENOMEM;
	t->nr_chunks = n;
	for (i = 0; i < n; i++) {
		/* __GFP_NOWARN: we report the failure ourselves, with numbers */
		t->chunks[i] = (void *)__get_free_pages(GFP_ATOMIC | __GFP_ZERO | __GFP_COMP |
							__GFP_NOWARN, VRHP_CHUNK_ORDER);
		if (!t->chunks[i]) {
			pr_err("%s table: btable allocation failed: got %u of %u 4 MiB chunks (order %d, GFP_ATOMIC)\n",
			       t->name, i, n, VRHP_CHUNK_ORDER);
			vrhp_bt_free(t);
			return -ENOMEM;
		}
	}
	t->hdr = t->chunks[0];
	t->base = NULL;
	t->backend = VRHP_BACKEND_BTABLE;
	vrhp_hdr_init(t, get_random_u32());
	pr_info("%s table: btable, %u chunks of 4 MiB, %llu + %llu entries\n", t->name, n,
		t->entries, t->oentries);
	return 0;
}

/* ---------------------------------------------------------------- hugepage */

static void vrhp_hp_release(struct vrhp_table *t)
{
	if (t->vmapped && t->base)
		vunmap(t->base);
	if (t->pages) {
		unpin_user_pages(t->pages, t->nr_pages);
		kvfree(t->pages);
	}
	t->pages = NULL;
	t->nr_pages = 0;
	t->base = NULL;
	t->vmapped = false;
	t->nr_hpages = 0;
	t->detached_warned = 0;
}

static int vrhp_seg_validate(struct vrhp_table *t, const struct vrhp_segment *s)
{
	if (s->page_size != VRHP_PAGE_1G && s->page_size != VRHP_PAGE_2M) {
		pr_err("%s segment: page size %llu not 1 GiB or 2 MiB\n", t->name, s->page_size);
		return -EINVAL;
	}
	if (!s->uaddr || s->uaddr & ~PAGE_MASK || s->len & ~PAGE_MASK || !s->len ||
	    s->offset & ~PAGE_MASK ||
	    (s->offset & (s->page_size - 1)) != (s->uaddr & (s->page_size - 1))) {
		pr_err("%s segment: address 0x%llx / length %llu / file offset %llu not aligned to %lu bytes and to the %llu-byte pages\n",
		       t->name, s->uaddr, s->len, s->offset, PAGE_SIZE, s->page_size);
		return -EINVAL;
	}
	if (s->len < t->file_bytes || s->len > VRHP_SEG_MAX_LEN) {
		pr_err("%s segment: length %llu outside [%llu, %llu]\n", t->name, s->len,
		       t->file_bytes, VRHP_SEG_MAX_LEN);
		return -EINVAL;
	}
	if (s->uaddr + s->len < s->uaddr || s->uaddr + s->len > TASK_SIZE_MAX ||
	    !access_ok((void __user *)(unsigned long)s->uaddr, s->len)) {
		pr_err("%s segment: bad user range 0x%llx+%llu\n", t->name, s->uaddr, s->len);
		return -EFAULT;
	}
	if (s->flags) {
		pr_err("%s segment: unknown flags 0x%x\n", t->name, s->flags);
		return -EINVAL;
	}
	return 0;
}

static int vrhp_hp_attach(struct vrhp_table *t, const struct vrhp_segment *s)
{
	unsigned long nr = s->len >> PAGE_SHIFT;
	unsigned long per = s->page_size >> PAGE_SHIFT;
	unsigned long first = (s->uaddr >> PAGE_SHIFT) & (per - 1);
	struct page *prev_head = NULL;
	unsigned long i;
	long pinned;
	int err;

	t->pages = kvmalloc_array(nr, sizeof(*t->pages), GFP_KERNEL);
	if (!t->pages)
		return -ENOMEM;

	mmap_read_lock(current->mm);
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 5, 0)
	pinned = pin_user_pages(s->uaddr, nr, FOLL_WRITE | FOLL_LONGTERM, t->pages, NULL);
#else
	pinned = pin_user_pages(s->uaddr, nr, FOLL_WRITE | FOLL_LONGTERM, t->pages);
#endif
	mmap_read_unlock(current->mm);
	if (pinned < 0) {
		pr_err("%s segment: pin_user_pages failed: %ld\n", t->name, pinned);
		kvfree(t->pages);
		t->pages = NULL;
		return pinned;
	}
	t->nr_pages = pinned;
	if (pinned != nr) {
		pr_err("%s segment: pinned %ld of %lu pages\n", t->name, pinned, nr);
		err = -EFAULT;
		goto fail;
	}

	/*
	 * Every 4 KiB page must sit in a hugetlb page of the declared size, at the
	 * place its user address says; a new huge page starts at its head.
	 */
	t->contiguous = true;
	t->nr_hpages = 0;
	for (i = 0; i < nr; i++) {
		struct page *p = t->pages[i];
		struct page *head = compound_head(p);

		if (head != prev_head) {
			if (!PageHuge(head) || page_size(head) != s->page_size) {
				pr_err("%s segment: page %lu is not in a %llu-byte hugetlb page\n",
				       t->name, i, s->page_size);
				err = -EINVAL;
				goto fail;
			}
			t->nr_hpages++;
			prev_head = head;
		}
		if (page_to_pfn(p) - page_to_pfn(head) != ((first + i) & (per - 1))) {
			pr_err("%s segment: page %lu not linear in its huge page\n", t->name, i);
			err = -EINVAL;
			goto fail;
		}
		if (i && page_to_pfn(p) != page_to_pfn(t->pages[i - 1]) + 1)
			t->contiguous = false;
		if (!(i & 65535))
			cond_resched();
	}

	if (t->nr_hpages == 1) {
		t->base = page_address(t->pages[0]);
		t->vmapped = false;
	} else {
		t->base = vmap(t->pages, nr, VM_MAP, PAGE_KERNEL);
		if (!t->base) {
			pr_err("%s segment: vmap of %lu pages failed\n", t->name, nr);
			err = -ENOMEM;
			goto fail;
		}
		t->vmapped = true;
	}
	t->hdr = t->base;
	memset(&t->seg, 0, sizeof(t->seg));
	t->seg.uaddr = s->uaddr;
	t->seg.len = s->len;
	t->seg.page_size = s->page_size;
	t->seg.table = t->id;
	t->seg.nr_hpages = t->nr_hpages;
	t->seg.contiguous = t->contiguous;
	t->seg.vmapped = t->vmapped;
	t->seg.offset = s->offset;
	strscpy(t->seg.path, s->path, sizeof(t->seg.path));
	return 0;

fail:
	vrhp_hp_release(t);
	return err;
}

static void vrhp_table_free(struct vrhp_table *t)
{
	if (t->backend == VRHP_BACKEND_BTABLE)
		vrhp_bt_free(t);
	else if (t->backend == VRHP_BACKEND_HUGEPAGE)
		vrhp_hp_release(t);
	t->backend = VRHP_BACKEND_NONE;
	t->hdr = NULL;
	t->base = NULL;
	t->ocursor = 0;
	t->olinked = 0;
	t->inserts = t->deletes = t->insert_failures = t->nospc = 0;
	memset(&t->seg, 0, sizeof(t->seg));
}

static void vrhp_free_all(void)
{
	int i;

	for (i = 0; i < VRHP_NR_TABLES; i++)
		vrhp_table_free(&vrhp_tables[i]);
	vrhp_state = VRHP_STATE_UNINIT;
}

/* ---------------------------------------------------------------- HP_CONFIG */

static long vrhp_hp_config(struct vrhp_hp_config __user *uarg)
{
	struct vrhp_hp_config *cfg;
	const struct vrhp_segment *seg[VRHP_NR_TABLES] = { NULL, NULL };
	int hpok = 0, bt = 0, invalid = 0, mismatch = 0, hdrstate[VRHP_NR_TABLES];
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
			pr_err("HP_CONFIG: segment %u names table %u (unknown or duplicate)\n",
			       i, s->table);
			ret = -EINVAL;
			goto out_free;
		}
		if (strnlen(s->path, VRHP_PATH_MAX) == VRHP_PATH_MAX) {
			pr_err("HP_CONFIG: segment %u path not NUL terminated\n", i);
			ret = -EINVAL;
			goto out_free;
		}
		seg[s->table] = s;
	}
	if (seg[0] && seg[1] && seg[0]->uaddr < seg[1]->uaddr + seg[1]->len &&
	    seg[1]->uaddr < seg[0]->uaddr + seg[0]->len) {
		pr_err("HP_CONFIG: flow and bridge segments overlap\n");
		ret = -EINVAL;
		goto out_free;
	}
	reset = cfg->flags & VRHP_CFG_RESET;
	memset(cfg->tables, 0, sizeof(cfg->tables));

	down_write(&vrhp_cfg_sem);
	if (vrhp_state == VRHP_STATE_READY && (!reset || vrhp_mem == VRHP_BACKEND_BTABLE)) {
		out = VRHP_OUT_ALREADY_INITIALISED;
		for (i = 0; i < VRHP_NR_TABLES; i++) {
			cfg->tables[i].backend = vrhp_tables[i].backend;
			cfg->tables[i].generation = vrhp_tables[i].hdr->generation;
		}
		goto done;
	}
	if (vrhp_state == VRHP_STATE_READY) {
		for (i = 0; i < VRHP_NR_TABLES; i++) {
			if (atomic_read(&vrhp_tables[i].mmap_count)) {
				pr_err("HP_CONFIG reset: %s table is mmapped\n",
				       vrhp_tables[i].name);
				ret = -EBUSY;
				goto unlock;
			}
		}
		pr_info("HP_CONFIG reset: tearing down tables\n");
		vrhp_free_all();
	}

	/* phase 1: pin and classify, write nothing */
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		struct vrhp_table *t = &vrhp_tables[i];
		struct vrhp_table_result *r = &cfg->tables[i];
		int err;

		hdrstate[i] = 0;
		if (!seg[i])
			continue;
		err = vrhp_seg_validate(t, seg[i]);
		if (err) {
			r->err = err;
			r->action = VRHP_ACT_FAILED;
			invalid++;
			continue;
		}
		err = vrhp_hp_attach(t, seg[i]);
		if (err) {
			r->err = err;
			r->action = VRHP_ACT_FAILED;
			continue;
		}
		t->backend = VRHP_BACKEND_HUGEPAGE;
		hdrstate[i] = vrhp_hdr_check(t, t->hdr);
		if (hdrstate[i] < 0 && !reset) {
			r->err = hdrstate[i];
			r->action = VRHP_ACT_MISMATCH;
			mismatch++;
		}
		hpok++;
	}
	if (mismatch) {
		out = VRHP_OUT_LAYOUT_MISMATCH;
		goto undo;
	}

	/* phase 2: fallback for tables without huge pages */
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		struct vrhp_table *t = &vrhp_tables[i];

		if (t->backend == VRHP_BACKEND_HUGEPAGE)
			continue;
		if (!seg[i])
			pr_warn("%s table: the agent sent no huge-page segment\n", t->name);
		else
			pr_warn("%s table: huge-page segment unusable (%d)\n", t->name,
				cfg->tables[i].err);
		if (!fallback) {
			pr_err("%s table: no usable huge pages and fallback=0: refusing\n",
			       t->name);
			out = VRHP_OUT_REFUSED;
			goto undo;
		}
		pr_warn("%s table: falling back to btable\n", t->name);
		if (vrhp_bt_alloc(t)) {
			out = VRHP_OUT_MEM_FAILURE;
			goto undo;
		}
		cfg->tables[i].action = VRHP_ACT_FALLBACK;
		bt++;
	}

	/* phase 3: commit headers */
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		struct vrhp_table *t = &vrhp_tables[i];
		struct vrhp_table_result *r = &cfg->tables[i];

		if (t->backend != VRHP_BACKEND_HUGEPAGE)
			continue;
		if (hdrstate[i] != 0 || reset) {
			vrhp_hdr_init(t, get_random_u32());
			vrhp_zero_entries(t);
			r->action = VRHP_ACT_FRESH;
			pr_info("%s table: hugepage %s, initialised (%u x %llu MiB pages, %s)\n",
				t->name, t->seg.path, t->nr_hpages, t->seg.page_size >> 20,
				t->vmapped ? "vmap" : "page_address");
		} else {
			u64 o;

			for (o = 0; o < t->oentries; o++)
				if (READ_ONCE(vrhp_eh(t, t->entries + o)->flags) & VRHP_EF_LINKED)
					t->olinked++;
			t->hdr->generation++;
			t->hdr->instance = get_random_u64();
			t->hdr->writer_version = VRHP_VERSION;
			r->action = VRHP_ACT_ADOPTED;
			pr_info("%s table: hugepage %s, adopted, generation %llu (%u x %llu MiB pages, %s)\n",
				t->name, t->seg.path, t->hdr->generation, t->nr_hpages,
				t->seg.page_size >> 20, t->vmapped ? "vmap" : "page_address");
		}
	}
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		cfg->tables[i].backend = vrhp_tables[i].backend;
		cfg->tables[i].generation = vrhp_tables[i].hdr->generation;
	}
	vrhp_state = VRHP_STATE_READY;
	if (!bt)
		out = VRHP_OUT_SUCCESS;
	else if (hpok)
		out = VRHP_OUT_PARTIAL;
	else if (invalid)
		out = VRHP_OUT_INVALID_ARG_FALLBACK_IN_USE;
	else
		out = VRHP_OUT_HUGEPAGE_FAILURE_FALLBACK_IN_USE;
	goto done;

undo:
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		if (cfg->tables[i].action == VRHP_ACT_FALLBACK)
			cfg->tables[i].action = VRHP_ACT_NONE;
		cfg->tables[i].backend = VRHP_BACKEND_NONE;
	}
	vrhp_free_all();
done:
	cfg->outcome = out;
	vrhp_last_outcome = out;
	if (out == VRHP_OUT_SUCCESS || out == VRHP_OUT_ALREADY_INITIALISED)
		pr_info("HP_CONFIG: %s\n", vrhp_outcome_name(out));
	else
		pr_warn("HP_CONFIG: %s\n", vrhp_outcome_name(out));
unlock:
	up_write(&vrhp_cfg_sem);
	if (!ret && copy_to_user(uarg, cfg, sizeof(*cfg)))
		ret = -EFAULT;
out_free:
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
	down_read(&vrhp_cfg_sem);
	t = &vrhp_tables[id];
	if (t->backend == VRHP_BACKEND_NONE) {
		up_read(&vrhp_cfg_sem);
		return ERR_PTR(-ENODEV);
	}
	if (mutex_lock_interruptible(&t->lock)) {
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
		break;
	case VRHP_IOC_FLOW_DEL:
		err = vrhp_lookup(t, &req.key, &idx);
		if (!err) {
			vrhp_remove(t, idx);
			t->deletes++;
		}
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
		err = vrhp_lookup(t, &req.key, &idx);
		if (!err) {
			vrhp_remove(t, idx);
			t->deletes++;
		}
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

static long vrhp_fill(void __user *uarg)
{
	struct vrhp_fill f;
	struct vrhp_table *t;
	u64 i, s, idx, now, start;
	int err;

	if (copy_from_user(&f, uarg, sizeof(f)))
		return -EFAULT;
	if (f.table >= VRHP_NR_TABLES || f.count > (1ULL << 32))
		return -EINVAL;
	t = vrhp_get_table(f.table);
	if (IS_ERR(t))
		return PTR_ERR(t);
	f.inserted = f.failed = 0;
	memset(f.first_fail_key, 0, sizeof(f.first_fail_key));
	f.first_fail_index = ~0ULL;
	f.first_fail_err = 0;
	s = f.seed;
	start = ktime_get_ns();
	now = ktime_get_real_ns();
	for (i = 0; i < f.count; i++) {
		u64 r1 = vrhp_mix(&s), r2 = vrhp_mix(&s), r3 = vrhp_mix(&s);
		u64 age = (r3 >> 40) % 3600;

		if (f.table == VRHP_TABLE_FLOW) {
			struct vrhp_flow_key k = {};
			struct vrhp_flow_entry *e;

			k.vrf = r3 & 0xf;
			k.proto = (r3 & 0x10) ? 17 : 6;
			k.sport = r1 >> 48;
			k.dport = r2 >> 48;
			if ((r3 & 0x300) == 0) {
				u64 r4 = vrhp_mix(&s), r5 = vrhp_mix(&s);

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
			} else if (f.first_fail_index == ~0ULL) {
				memcpy(f.first_fail_key, &k, sizeof(k));
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
			} else if (f.first_fail_index == ~0ULL) {
				memcpy(f.first_fail_key, &k, sizeof(k));
			}
		}
		if (err) {
			f.failed++;
			t->insert_failures++;
			if (err == -ENOSPC)
				t->nospc++;
			if (f.first_fail_index == ~0ULL) {
				f.first_fail_index = i;
				f.first_fail_err = err;
			}
		} else {
			f.inserted++;
			t->inserts++;
		}
		if (!(i & 1023)) {
			cond_resched();
			if (fatal_signal_pending(current))
				break;
		}
	}
	f.elapsed_ns = ktime_get_ns() - start;
	vrhp_put_table(t);
	if (copy_to_user(uarg, &f, sizeof(f)))
		return -EFAULT;
	return 0;
}

static long vrhp_stats(void __user *uarg)
{
	struct vrhp_stats st;
	struct vrhp_table *t;
	u64 i, b;

	if (copy_from_user(&st, uarg, sizeof(st)))
		return -EFAULT;
	t = vrhp_get_table(st.table);
	if (IS_ERR(t))
		return PTR_ERR(t);
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
	for (b = 0; b < t->nbuckets; b++) {
		u64 len = 0, n;

		n = vrhp_next(t, READ_ONCE(vrhp_eh(t, b * VRHP_BUCKET_SIZE + 3)->next));
		while (n != ~0ULL && len <= t->oentries) {
			len++;
			n = vrhp_next(t, READ_ONCE(vrhp_eh(t, n)->next));
		}
		st.longest_chain = max(st.longest_chain, len);
		if (!(b & 65535))
			cond_resched();
	}
	st.used = st.main_used + st.oflow_used;
	st.inserts = t->inserts;
	st.deletes = t->deletes;
	st.insert_failures = t->insert_failures;
	st.nospc_failures = t->nospc;
	vrhp_put_table(t);
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
	start = ktime_get_ns();
	for (off = 0; off < t->table_bytes; ) {
		u64 a = VRHP_HDR_SIZE + off;
		u64 len = min_t(u64, t->table_bytes - off,
				VRHP_CHUNK_SIZE - (a & (VRHP_CHUNK_SIZE - 1)));
		u64 *w = t->base ? t->base + a :
			 t->chunks[a >> 22] + (a & (VRHP_CHUNK_SIZE - 1));

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
	pr_info("%s table: %s %llu bytes through the module's mapping\n", t->name,
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

	if (t->backend != VRHP_BACKEND_HUGEPAGE || !t->pages)
		return false;
	/* stepping by a huge page from the first 4 KiB page visits each huge page */
	for (i = 0; i < t->nr_pages && !gone; i += t->seg.page_size >> PAGE_SHIFT)
		gone = !READ_ONCE(compound_head(t->pages[i])->mapping);
	if (!gone)
		gone = !READ_ONCE(compound_head(t->pages[t->nr_pages - 1])->mapping);
	if (gone && !xchg(&t->detached_warned, 1))
		pr_warn("%s table: hugetlbfs file %s no longer holds the pinned pages (deleted or truncated); keeping the pinned memory\n",
			t->name, t->seg.path);
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
		ti->backend = t->backend;
		if (t->hdr) {
			ti->generation = t->hdr->generation;
			ti->instance = t->hdr->instance;
			ti->hash_seed = t->hdr->hash_seed;
		}
		if (fault_zero_size)
			ti->entries = ti->oentries = ti->table_bytes = ti->file_bytes = 0;
		if (t->backend == VRHP_BACKEND_BTABLE) {
			ti->nr_chunks = t->nr_chunks;
		} else if (t->backend == VRHP_BACKEND_HUGEPAGE) {
			ti->nr_chunks = t->nr_hpages;
			inf->segs[n] = t->seg;
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

	if (!capable(CAP_SYS_ADMIN) && !capable(CAP_NET_ADMIN))
		return -EPERM;
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
	if (vma->vm_flags & VM_WRITE)
		return -EPERM;
	if (vma->vm_pgoff)
		return -EINVAL;
	down_read(&vrhp_cfg_sem);
	if (t->backend != VRHP_BACKEND_BTABLE) {
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
		void *chunk = t->chunks[off / VRHP_CHUNK_SIZE];

		err = remap_pfn_range(vma, vma->vm_start + off, page_to_pfn(virt_to_page(chunk)),
				      len, vma->vm_page_prot);
		if (err)
			goto out;
		off += len;
	}
	vma->vm_private_data = t;
	vma->vm_ops = &vrhp_vm_ops;
	atomic_inc(&t->mmap_count);
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
			err = vrhp_bt_alloc(&vrhp_tables[i]);
			if (err) {
				vrhp_free_all();
				return err;
			}
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
	pr_info("loaded: version %d layout %d tag '%s' mem=%s fallback=%d flow %llu+%llu (%llu B) bridge %llu+%llu (%llu B)\n",
		VRHP_VERSION, VRHP_LAYOUT, version_tag ? version_tag : "", mem, fallback,
		f->entries, f->oentries, f->table_bytes, b->entries, b->oentries,
		b->table_bytes);
	return 0;

fail_flow:
	misc_deregister(&vrhp_flow_dev);
fail_ctl:
	misc_deregister(&vrhp_ctl_dev);
fail:
	vrhp_free_all();
	return err;
}

static void __exit vrhp_exit(void)
{
	misc_deregister(&vrhp_bridge_dev);
	misc_deregister(&vrhp_flow_dev);
	misc_deregister(&vrhp_ctl_dev);
	down_write(&vrhp_cfg_sem);
	vrhp_free_all();
	up_write(&vrhp_cfg_sem);
	pr_info("unloaded\n");
}

module_init(vrhp_init);
module_exit(vrhp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Model of vRouter flow/bridge table memory on huge pages");
MODULE_VERSION(__stringify(VRHP_VERSION) "." __stringify(VRHP_LAYOUT));
