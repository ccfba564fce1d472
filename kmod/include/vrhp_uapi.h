/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vrhp_uapi.h - ABI shared by the vrhp kernel module and vrhp-agent.
 *
 * All structures use fixed-size types and explicit padding so that 32-bit and
 * 64-bit user space see the same layout; sizes are checked at build time.
 *
 * The table memory (huge-page file, or the read-only btable mapping) is laid out as
 *   [ struct vrhp_table_hdr, padded to VRHP_HDR_SIZE ][ main entries ][ overflow entries ]
 * Entry i (0-based, main entries first) lives at byte VRHP_HDR_SIZE + i * entry_size.
 * Main entries form buckets of VRHP_BUCKET_SIZE. Overflow entries are chained per bucket:
 * the chain head is the `next` field of the last entry of the bucket, then the `next`
 * field of each overflow entry; `next` holds (overflow index + 1), 0 ends the chain.
 */
#ifndef _UAPI_VRHP_H
#define _UAPI_VRHP_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/ioctl.h>
#else
#include <linux/types.h>
#include <sys/ioctl.h>
#endif

#ifndef VRHP_LAYOUT
#define VRHP_LAYOUT 1
#endif

#define VRHP_ABI_VERSION	2
#define VRHP_HDR_MAGIC		0x314c425450485256ULL	/* "VRHPTBL1" little endian */
#define VRHP_HDR_SIZE		4096u
#define VRHP_BUCKET_SIZE	4u
#define VRHP_CHUNK_SIZE		(4u << 20)		/* btable chunk: order 10 */
#define VRHP_MAX_SEGS		4u
#define VRHP_PATH_MAX		128u
#define VRHP_TAG_MAX		32u
#define VRHP_PAGE_2M		(2ULL << 20)
#define VRHP_PAGE_1G		(1ULL << 30)
#define VRHP_SEG_MAX_LEN	(64ULL << 30)

#define VRHP_FLOW_ENTRY_SIZE	256u
#define VRHP_BRIDGE_ENTRY_SIZE	64u

enum vrhp_table_id {
	VRHP_TABLE_FLOW = 0,
	VRHP_TABLE_BRIDGE = 1,
	VRHP_NR_TABLES = 2,
};

enum vrhp_backend {
	VRHP_BACKEND_NONE = 0,
	VRHP_BACKEND_BTABLE = 1,
	VRHP_BACKEND_HUGEPAGE = 2,
};

enum vrhp_state {
	VRHP_STATE_UNINIT = 0,		/* hugepage mode, waiting for HP_CONFIG */
	VRHP_STATE_READY = 1,		/* tables exist */
};

/* Outcome of HP_CONFIG (modelled on the vRouter's huge-page response codes). */
enum vrhp_outcome {
	VRHP_OUT_SUCCESS = 0,			/* every table on huge pages */
	VRHP_OUT_MEM_FAILURE = 1,		/* no usable huge pages and btable fallback failed */
	VRHP_OUT_INVALID_ARG_FALLBACK_IN_USE = 2, /* bad segment arguments, btable in use */
	VRHP_OUT_HUGEPAGE_FAILURE_FALLBACK_IN_USE = 3, /* pin/type check failed, btable in use */
	VRHP_OUT_ALREADY_INITIALISED = 4,	/* tables exist; nothing changed */
	VRHP_OUT_PARTIAL = 5,			/* some tables on huge pages, others btable */
	VRHP_OUT_LAYOUT_MISMATCH = 6,		/* a file header is incompatible; nothing written */
	VRHP_OUT_REFUSED = 7,			/* no usable huge pages and fallback=0 */
	VRHP_OUT_NONE = 255,			/* no HP_CONFIG seen yet */
};

/* Per-table action taken by HP_CONFIG. */
enum vrhp_table_action {
	VRHP_ACT_NONE = 0,
	VRHP_ACT_FRESH = 1,		/* zero file (or reset): header initialised, entries zeroed */
	VRHP_ACT_ADOPTED = 2,		/* matching header: table kept, generation bumped */
	VRHP_ACT_FALLBACK = 3,		/* btable chunks allocated instead */
	VRHP_ACT_MISMATCH = 4,		/* incompatible header */
	VRHP_ACT_FAILED = 5,
};

/* Header at offset 0 of each table's memory. */
struct vrhp_table_hdr {
	__u64 magic;
	__u32 layout_version;
	__u32 table;			/* enum vrhp_table_id */
	__u32 entry_size;
	__u32 hdr_size;
	__u64 entries;			/* main entries */
	__u64 oentries;			/* overflow entries */
	__u64 table_bytes;		/* (entries + oentries) * entry_size */
	__u32 hash_seed;
	__u32 writer_version;		/* VRHP_VERSION of the module that last wrote it */
	__u64 generation;		/* 1 at creation, +1 on each adoption */
	__u64 instance;			/* random, renewed at creation and adoption */
	__u64 created_ns;		/* CLOCK_REALTIME */
	__u8 reserved[72];
};

/* Entry flags. */
#define VRHP_EF_VALID		0x1u	/* entry holds a key */
#define VRHP_EF_LINKED		0x2u	/* overflow entry is linked into a bucket chain */

#define VRHP_AF_INET		4u
#define VRHP_AF_INET6		6u

struct vrhp_flow_key {
	__u8 src[16];			/* IPv4: first 4 bytes, rest zero */
	__u8 dst[16];
	__u32 vrf;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;			/* VRHP_AF_INET or VRHP_AF_INET6 */
	__u8 pad[2];			/* must be zero */
};

#if VRHP_LAYOUT == 1
struct vrhp_flow_entry {
	__u32 flags;
	__u32 next;
	struct vrhp_flow_key key;
	__u32 action;
	__u64 packets;
	__u64 bytes;
	__u64 last_used;		/* ns, CLOCK_REALTIME */
	__u8 pad[VRHP_FLOW_ENTRY_SIZE - 80];
};
#else
/* layout 2 ("v3"): counters before the key */
struct vrhp_flow_entry {
	__u32 flags;
	__u32 next;
	__u64 last_used;
	__u64 packets;
	__u64 bytes;
	__u32 action;
	struct vrhp_flow_key key;
	__u8 pad[VRHP_FLOW_ENTRY_SIZE - 80];
};
#endif

struct vrhp_bridge_key {
	__u32 vrf;
	__u8 mac[6];
	__u8 pad[2];			/* must be zero */
};

#if VRHP_LAYOUT == 1
struct vrhp_bridge_entry {
	__u32 flags;
	__u32 next;
	struct vrhp_bridge_key key;
	__u32 nexthop;
	__u32 label;
	__u32 pad0;
	__u64 last_used;
	__u64 packets;
	__u8 pad[VRHP_BRIDGE_ENTRY_SIZE - 48];
};
#else
struct vrhp_bridge_entry {
	__u32 flags;
	__u32 next;
	__u64 last_used;
	__u64 packets;
	__u32 nexthop;
	__u32 label;
	struct vrhp_bridge_key key;
	__u32 pad0;
	__u8 pad[VRHP_BRIDGE_ENTRY_SIZE - 48];
};
#endif

/* ---- ioctl payloads ---- */

struct vrhp_table_info {
	__u64 entries;
	__u64 oentries;
	__u64 table_bytes;		/* entries area only */
	__u64 file_bytes;		/* VRHP_HDR_SIZE + table_bytes */
	__u64 generation;		/* 0 when the table does not exist */
	__u64 instance;
	__u32 entry_size;
	__u32 backend;			/* enum vrhp_backend */
	__u32 hash_seed;
	__u32 nr_chunks;		/* btable: 4 MiB chunks; hugepage: huge pages */
};

struct vrhp_seg_info {
	__u64 uaddr;
	__u64 len;
	__u64 page_size;
	__u32 table;
	__u32 nr_hpages;
	__u32 contiguous;		/* 1 if the huge pages are physically adjacent */
	__u32 vmapped;			/* 1 if vmap() was used, 0 if page_address() */
	char path[VRHP_PATH_MAX];
	__u64 offset;			/* byte offset of the table in the file */
	__u32 detached;			/* 1 if the file no longer holds the pinned pages */
	__u32 pad;
};

struct vrhp_info {
	__u32 abi_version;
	__u32 module_version;		/* VRHP_VERSION */
	__u32 layout_version;		/* VRHP_LAYOUT */
	__u32 mem;			/* requested: VRHP_BACKEND_BTABLE or _HUGEPAGE */
	__u32 state;			/* enum vrhp_state */
	__u32 fallback;
	__u32 nr_segs;
	__u32 last_outcome;		/* enum vrhp_outcome */
	char version_tag[VRHP_TAG_MAX];
	struct vrhp_table_info tables[VRHP_NR_TABLES];
	struct vrhp_seg_info segs[VRHP_MAX_SEGS];
};

struct vrhp_segment {
	__u64 uaddr;			/* 4 KiB aligned; its huge pages are of page_size */
	__u64 len;			/* multiple of 4 KiB, >= file_bytes */
	__u64 page_size;		/* VRHP_PAGE_1G or VRHP_PAGE_2M */
	__u32 table;			/* enum vrhp_table_id */
	__u32 flags;			/* must be 0 */
	char path[VRHP_PATH_MAX];	/* hugetlbfs file (informational), NUL terminated */
	__u64 offset;			/* byte offset of uaddr in that file (informational) */
};

struct vrhp_table_result {
	__u32 backend;
	__u32 action;			/* enum vrhp_table_action */
	__s32 err;			/* negative errno for the huge-page attempt, 0 if none */
	__u32 pad;
	__u64 generation;
};

#define VRHP_CFG_RESET		0x1u	/* tear down and re-initialise, wiping the files */

struct vrhp_hp_config {
	__u32 nr_segs;			/* in: <= VRHP_MAX_SEGS */
	__u32 flags;			/* in: VRHP_CFG_* */
	__u32 outcome;			/* out: enum vrhp_outcome */
	__u32 pad;
	struct vrhp_table_result tables[VRHP_NR_TABLES];	/* out */
	struct vrhp_segment segs[VRHP_MAX_SEGS];		/* in */
};

struct vrhp_flow_req {
	struct vrhp_flow_key key;
	__u32 action;			/* in (ADD), out (GET) */
	__u32 index;			/* out: entry index */
	__u32 flags;			/* out */
	__u64 packets;			/* out (GET) */
	__u64 bytes;
	__u64 last_used;
};

struct vrhp_bridge_req {
	struct vrhp_bridge_key key;
	__u32 nexthop;
	__u32 label;
	__u32 index;
	__u32 flags;
	__u32 pad;
	__u64 last_used;
	__u64 packets;
};

struct vrhp_fill {
	__u32 table;			/* in */
	__u32 pad;
	__u64 count;			/* in: entries to try */
	__u64 seed;			/* in */
	__u64 inserted;			/* out */
	__u64 failed;			/* out */
	__u64 first_fail_index;		/* out: ~0 if none */
	__s32 first_fail_err;		/* out: negative errno */
	__u32 pad2;
	__u64 elapsed_ns;		/* out */
	__u8 first_fail_key[48];	/* out: struct vrhp_flow_key or vrhp_bridge_key */
};

/*
 * PATTERN: seed != 0 writes word w at byte offset o of the entries area as
 * VRHP_PATTERN_WORD(seed, o) through the module's own mapping of the table (the
 * table's contents are destroyed); seed == 0 zeroes the entries (an empty table).
 */
struct vrhp_pattern {
	__u32 table;			/* in */
	__u32 pad;
	__u64 seed;			/* in */
	__u64 bytes;			/* out: bytes written */
	__u64 elapsed_ns;		/* out */
};

#define VRHP_PATTERN_WORD(seed, off) \
	((((__u64)(off) >> 3) + 1) * 0x9e3779b97f4a7c15ULL ^ (__u64)(seed))

struct vrhp_stats {
	__u32 table;			/* in */
	__u32 pad;
	__u64 entries;
	__u64 oentries;
	__u64 used;			/* valid entries (main + overflow) */
	__u64 main_used;
	__u64 oflow_used;
	__u64 inserts;			/* since this module instance took the table */
	__u64 deletes;
	__u64 insert_failures;
	__u64 nospc_failures;
	__u64 longest_chain;
};

#define VRHP_IOC_MAGIC		'V'
#define VRHP_IOC_INFO		_IOR(VRHP_IOC_MAGIC, 0x01, struct vrhp_info)
#define VRHP_IOC_HP_CONFIG	_IOWR(VRHP_IOC_MAGIC, 0x02, struct vrhp_hp_config)
#define VRHP_IOC_FLOW_ADD	_IOWR(VRHP_IOC_MAGIC, 0x10, struct vrhp_flow_req)
#define VRHP_IOC_FLOW_DEL	_IOW(VRHP_IOC_MAGIC, 0x11, struct vrhp_flow_req)
#define VRHP_IOC_FLOW_GET	_IOWR(VRHP_IOC_MAGIC, 0x12, struct vrhp_flow_req)
#define VRHP_IOC_BRIDGE_ADD	_IOWR(VRHP_IOC_MAGIC, 0x20, struct vrhp_bridge_req)
#define VRHP_IOC_BRIDGE_DEL	_IOW(VRHP_IOC_MAGIC, 0x21, struct vrhp_bridge_req)
#define VRHP_IOC_BRIDGE_GET	_IOWR(VRHP_IOC_MAGIC, 0x22, struct vrhp_bridge_req)
#define VRHP_IOC_FILL		_IOWR(VRHP_IOC_MAGIC, 0x30, struct vrhp_fill)
#define VRHP_IOC_STATS		_IOWR(VRHP_IOC_MAGIC, 0x31, struct vrhp_stats)
#define VRHP_IOC_PATTERN	_IOWR(VRHP_IOC_MAGIC, 0x32, struct vrhp_pattern)

#define VRHP_ASSERT_SIZE(t, n) _Static_assert(sizeof(t) == (n), #t " size changed")
VRHP_ASSERT_SIZE(struct vrhp_table_hdr, 152);
VRHP_ASSERT_SIZE(struct vrhp_flow_key, 44);
VRHP_ASSERT_SIZE(struct vrhp_flow_entry, VRHP_FLOW_ENTRY_SIZE);
VRHP_ASSERT_SIZE(struct vrhp_bridge_key, 12);
VRHP_ASSERT_SIZE(struct vrhp_bridge_entry, VRHP_BRIDGE_ENTRY_SIZE);
VRHP_ASSERT_SIZE(struct vrhp_table_info, 64);
VRHP_ASSERT_SIZE(struct vrhp_seg_info, 184);
VRHP_ASSERT_SIZE(struct vrhp_info, 64 + 2 * 64 + 4 * 184);
VRHP_ASSERT_SIZE(struct vrhp_segment, 168);
VRHP_ASSERT_SIZE(struct vrhp_table_result, 24);
VRHP_ASSERT_SIZE(struct vrhp_hp_config, 16 + 2 * 24 + 4 * 168);
VRHP_ASSERT_SIZE(struct vrhp_flow_req, 80);
VRHP_ASSERT_SIZE(struct vrhp_bridge_req, 48);
VRHP_ASSERT_SIZE(struct vrhp_fill, 112);
VRHP_ASSERT_SIZE(struct vrhp_pattern, 32);
VRHP_ASSERT_SIZE(struct vrhp_stats, 88);

#endif /* _UAPI_VRHP_H */
