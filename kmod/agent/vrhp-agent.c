// SPDX-License-Identifier: GPL-2.0
/*
 * vrhp-agent - user-space agent of the vrhp module (model of the vRouter agent's
 * table memory handling). JSON on stdout, errors on stderr.
 *
 * Exit codes: 0 ok; 1 usage or system error; 2 the module refused (errno or a failing
 * outcome: MEM_FAILURE, LAYOUT_MISMATCH, REFUSED); 3 setup degraded (PARTIAL,
 * INVALID_ARG_FALLBACK_IN_USE, HUGEPAGE_FAILURE_FALLBACK_IN_USE).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <mntent.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vrhp_uapi.h"

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

#define CTL_DEV "/dev/vrhp"
#ifndef VRHP_DEFECT_DAEMON_KEEPS_OLD_MAP
#define VRHP_DEFECT_DAEMON_KEEPS_OLD_MAP 0
#endif
#define ONE_FILE_ALIGN (2ull << 20)

static const char *const table_names[VRHP_NR_TABLES] = { "flow", "bridge" };
static const char *const map_devs[VRHP_NR_TABLES] = { "/dev/vrhp_flow", "/dev/vrhp_bridge" };
static const char *const backend_names[] = { "none", "btable", "hugepage" };
static const char *const action_names[] = { "none", "fresh", "adopted", "fallback",
					    "mismatch", "failed" };

static const char *outcome_name(uint32_t o)
{
	switch (o) {
	case VRHP_OUT_SUCCESS: return "SUCCESS";
	case VRHP_OUT_MEM_FAILURE: return "MEM_FAILURE";
	case VRHP_OUT_INVALID_ARG_FALLBACK_IN_USE: return "INVALID_ARG_FALLBACK_IN_USE";
	case VRHP_OUT_HUGEPAGE_FAILURE_FALLBACK_IN_USE: return "HUGEPAGE_FAILURE_FALLBACK_IN_USE";
	case VRHP_OUT_ALREADY_INITIALISED: return "ALREADY_INITIALISED";
	case VRHP_OUT_PARTIAL: return "PARTIAL";
	case VRHP_OUT_LAYOUT_MISMATCH: return "LAYOUT_MISMATCH";
	case VRHP_OUT_REFUSED: return "REFUSED";
	default: return "NONE";
	}
}

static const char *bname(uint32_t b)
{
	return b < 3 ? backend_names[b] : "unknown";
}

__attribute__((noreturn, format(printf, 2, 3)))
static void die(int code, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "vrhp-agent: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static const char *errname(int e)
{
	switch (e < 0 ? -e : e) {
	case 0: return "OK";
	case ENOENT: return "ENOENT";
	case ENOSPC: return "ENOSPC";
	case EEXIST: return "EEXIST";
	case EINVAL: return "EINVAL";
	case EFAULT: return "EFAULT";
	case ENOMEM: return "ENOMEM";
	case ENODEV: return "ENODEV";
	case EPERM: return "EPERM";
	case EBUSY: return "EBUSY";
	case EPROTO: return "EPROTO";
	case EINTR: return "EINTR";
	case EACCES: return "EACCES";
	case EUCLEAN: return "EUCLEAN";
	default: return "EOTHER";
	}
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t now_real_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int ctl_fd = -1;

static int ctl(void)
{
	if (ctl_fd < 0) {
		ctl_fd = open(CTL_DEV, O_RDWR | O_CLOEXEC);
		if (ctl_fd < 0)
			die(1, "%s: %s (is the vrhp module loaded?)", CTL_DEV, strerror(errno));
	}
	return ctl_fd;
}

static void get_info(struct vrhp_info *inf)
{
	memset(inf, 0, sizeof(*inf));
	if (ioctl(ctl(), VRHP_IOC_INFO, inf))
		die(1, "INFO ioctl: %s", strerror(errno));
}

/*
 * The upstream agent asserted table_size_ != 0 and crashed; every command that maps
 * or sizes a table refuses instead, naming the table.
 */
static void require_size(const struct vrhp_info *inf, int id)
{
	const struct vrhp_table_info *t = &inf->tables[id];

	if (!t->entries || !t->table_bytes || !t->file_bytes || !t->entry_size)
		die(2, "module reports %s table size 0 (entries %" PRIu64 ", table_bytes %" PRIu64
		    "): refusing to map (table_size_ != 0)",
		    id == VRHP_TABLE_FLOW ? "flow" : "bridge", (uint64_t)t->entries,
		    (uint64_t)t->table_bytes);
}

static int table_id(const char *s)
{
	if (!strcmp(s, "flow"))
		return VRHP_TABLE_FLOW;
	if (!strcmp(s, "bridge"))
		return VRHP_TABLE_BRIDGE;
	die(1, "unknown table '%s' (want flow or bridge)", s);
}

/* tables selected by an optional argument: flow, bridge, all (default) */
static unsigned int table_mask(int argc, char **argv, int i)
{
	if (i >= argc || !strcmp(argv[i], "all"))
		return 3;
	return 1u << table_id(argv[i]);
}

static uint64_t parse_u64(const char *s, const char *what)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || !*s || *end || *s == '-')
		die(1, "invalid %s '%s'", what, s);
	return v;
}

static void fjson_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

static void json_str(const char *s)
{
	fjson_str(stdout, s);
}

static void print_flow_key(const struct vrhp_flow_key *k);
static void print_mac(const uint8_t *m);

/* ------------------------------------------------------------ mapping */

struct tmap {
	void *base;		/* the table's header */
	size_t len;
	void *map_base;		/* what mmap returned (hugetlbfs: huge-page aligned) */
	size_t map_len;
	int fd;
	uint32_t backend;
	char source[VRHP_PATH_MAX + 32];
};

static const struct vrhp_seg_info *seg_of(const struct vrhp_info *inf, int id)
{
	uint32_t i;

	for (i = 0; i < inf->nr_segs && i < VRHP_MAX_SEGS; i++)
		if (inf->segs[i].table == (uint32_t)id)
			return &inf->segs[i];
	return NULL;
}

static void unmap_table(struct tmap *m)
{
	munmap(m->map_base, m->map_len);
	close(m->fd);
}

#define MAP_FAIL(code, ...) \
	do { \
		snprintf(err, errlen, __VA_ARGS__); \
		if (m->fd >= 0) \
			close(m->fd); \
		m->fd = -1; \
		return (code); \
	} while (0)

/*
 * Map table id as the module sees it. Returns 0, or the exit code (1 system error,
 * 2 the table cannot be reached) with the reason in err.
 */
static int try_map_table(const struct vrhp_info *inf, int id, int writable, struct tmap *m,
			 char *err, size_t errlen)
{
	const struct vrhp_table_info *ti = &inf->tables[id];
	const struct vrhp_table_hdr *h;
	long pg = sysconf(_SC_PAGESIZE);

	uint64_t delta = 0;
	off_t map_off = 0;

	memset(m, 0, sizeof(*m));
	m->fd = -1;
	m->backend = ti->backend;
	if (ti->backend != VRHP_BACKEND_NONE && (!ti->entries || !ti->table_bytes ||
						!ti->file_bytes || !ti->entry_size))
		MAP_FAIL(2, "module reports %s table size 0 (entries %" PRIu64 ", table_bytes %"
			 PRIu64 "): refusing to map (table_size_ != 0)", table_names[id],
			 (uint64_t)ti->entries, (uint64_t)ti->table_bytes);
	if (ti->backend == VRHP_BACKEND_HUGEPAGE) {
		const struct vrhp_seg_info *s = seg_of(inf, id);
		struct stat st;

		if (!s)
			MAP_FAIL(1, "%s table: module reports no segment", table_names[id]);
		snprintf(m->source, sizeof(m->source), "%s", s->path);
		m->fd = open(s->path, writable ? O_RDWR : O_RDONLY);
		if (m->fd < 0 && errno == ENOENT)
			MAP_FAIL(2, "%s table: %s was deleted while the module holds its pages (the module keeps working on the memory it pinned; the agent cannot reach it: run setup --reset)",
			    table_names[id], s->path);
		if (m->fd < 0)
			MAP_FAIL(1, "%s table: open %s: %s", table_names[id], s->path, strerror(errno));
		if (fstat(m->fd, &st))
			MAP_FAIL(1, "%s table: stat %s: %s", table_names[id], s->path, strerror(errno));
		if ((uint64_t)st.st_size < s->offset + s->len)
			MAP_FAIL(2, "%s table: %s was truncated to %lld bytes (needs %" PRIu64 ") while the module holds its pages (the module keeps working on the memory it pinned: run setup --reset)",
			    table_names[id], s->path, (long long)st.st_size,
			    (uint64_t)(s->offset + s->len));
		if (s->detached)
			MAP_FAIL(2, "%s table: the module reports that %s no longer holds its pinned pages (deleted or truncated and recreated): run setup --reset",
			    table_names[id], s->path);
		delta = s->offset & (s->page_size - 1);
		map_off = s->offset - delta;
		m->len = s->len;
	} else if (ti->backend == VRHP_BACKEND_BTABLE) {
		if (writable)
			MAP_FAIL(2, "%s table is on btable: its mapping is read-only (needs hugepage backend)",
			    table_names[id]);
		snprintf(m->source, sizeof(m->source), "%s", map_devs[id]);
		m->fd = open(map_devs[id], O_RDONLY);
		if (m->fd < 0)
			MAP_FAIL(1, "%s table: open %s: %s", table_names[id], map_devs[id],
			    strerror(errno));
		m->len = (ti->file_bytes + pg - 1) / pg * pg;
	} else {
		MAP_FAIL(2, "%s table does not exist (module state %s; run setup)", table_names[id],
		    inf->state == VRHP_STATE_READY ? "ready" : "uninit");
	}
	m->map_len = m->len + delta;
	m->map_base = mmap(NULL, m->map_len, PROT_READ | (writable ? PROT_WRITE : 0),
			   MAP_SHARED, m->fd, map_off);
	if (m->map_base == MAP_FAILED)
		MAP_FAIL(1, "%s table: mmap %s (%zu bytes): %s", table_names[id], m->source, m->len,
		    strerror(errno));
	m->base = (char *)m->map_base + delta;
	h = m->base;
	if (h->magic != VRHP_HDR_MAGIC || h->instance != ti->instance ||
	    h->layout_version != VRHP_LAYOUT || h->entry_size != ti->entry_size ||
	    h->entries != ti->entries || h->oentries != ti->oentries) {
		snprintf(err, errlen, "%s table: %s does not show the module's table (magic %#"
			 PRIx64 " instance %#" PRIx64 " vs module %#" PRIx64
			 ", layout %u): file replaced?",
			 table_names[id], m->source, (uint64_t)h->magic, (uint64_t)h->instance,
			 (uint64_t)ti->instance, h->layout_version);
		unmap_table(m);
		return 2;
	}
	return 0;
}

/* Map table id as the module sees it; exits with a clear message on failure. */
static void map_table(const struct vrhp_info *inf, int id, int writable, struct tmap *m)
{
	char err[VRHP_PATH_MAX + 256];
	int code = try_map_table(inf, id, writable, m, err, sizeof(err));

	if (code)
		die(code, "%s", err);
}

static inline const void *entry_at(const void *base, uint32_t esz, uint64_t i)
{
	return (const char *)base + VRHP_HDR_SIZE + i * esz;
}

static uint64_t entry_last_used(int id, const void *e)
{
	if (id == VRHP_TABLE_FLOW)
		return ((const struct vrhp_flow_entry *)e)->last_used;
	return ((const struct vrhp_bridge_entry *)e)->last_used;
}

/* ------------------------------------------------------------ info */

static void print_table_info(const struct vrhp_table_info *t)
{
	printf("{\"entries\":%" PRIu64 ",\"oentries\":%" PRIu64 ",\"entry_size\":%u,"
	       "\"table_bytes\":%" PRIu64 ",\"file_bytes\":%" PRIu64 ",\"backend\":\"%s\","
	       "\"generation\":%" PRIu64 ",\"instance\":%" PRIu64 ",\"hash_seed\":%u,"
	       "\"nr_chunks\":%u}",
	       (uint64_t)t->entries, (uint64_t)t->oentries, t->entry_size,
	       (uint64_t)t->table_bytes, (uint64_t)t->file_bytes, bname(t->backend),
	       (uint64_t)t->generation, (uint64_t)t->instance, t->hash_seed, t->nr_chunks);
}

static int cmd_info(void)
{
	struct vrhp_info inf;
	uint32_t i;

	get_info(&inf);
	printf("{\"abi_version\":%u,\"module_version\":%u,\"layout_version\":%u,"
	       "\"agent_layout_version\":%d,\"version_tag\":",
	       inf.abi_version, inf.module_version, inf.layout_version, VRHP_LAYOUT);
	inf.version_tag[VRHP_TAG_MAX - 1] = 0;
	json_str(inf.version_tag);
	printf(",\"mem\":\"%s\",\"state\":\"%s\",\"fallback\":%s,\"last_outcome\":\"%s\","
	       "\"tables\":{",
	       bname(inf.mem), inf.state == VRHP_STATE_READY ? "ready" : "uninit",
	       inf.fallback ? "true" : "false", outcome_name(inf.last_outcome));
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		printf("%s\"%s\":", i ? "," : "", table_names[i]);
		print_table_info(&inf.tables[i]);
	}
	printf("},\"segments\":[");
	for (i = 0; i < inf.nr_segs && i < VRHP_MAX_SEGS; i++) {
		const struct vrhp_seg_info *s = &inf.segs[i];

		printf("%s{\"table\":\"%s\",\"path\":", i ? "," : "",
		       s->table < VRHP_NR_TABLES ? table_names[s->table] : "?");
		inf.segs[i].path[VRHP_PATH_MAX - 1] = 0;
		json_str(s->path);
		printf(",\"offset\":%" PRIu64 ",\"uaddr\":%" PRIu64 ",\"len\":%" PRIu64
		       ",\"page_size\":%" PRIu64 ",\"nr_hpages\":%u,\"contiguous\":%s,"
		       "\"vmapped\":%s,\"detached\":%s}",
		       (uint64_t)s->offset, (uint64_t)s->uaddr, (uint64_t)s->len,
		       (uint64_t)s->page_size, s->nr_hpages, s->contiguous ? "true" : "false",
		       s->vmapped ? "true" : "false", s->detached ? "true" : "false");
	}
	printf("]}\n");
	return 0;
}

/* ------------------------------------------------------------ hugetlbfs */

static uint64_t mount_pagesize(const char *opts)
{
	const char *p = strstr(opts, "pagesize=");
	char *end;
	uint64_t v;

	if (!p)
		return 0;
	v = strtoull(p + 9, &end, 10);
	switch (*end) {
	case 'K': case 'k': return v << 10;
	case 'M': case 'm': return v << 20;
	case 'G': case 'g': return v << 30;
	default: return v;
	}
}

static uint64_t default_pagesize(void)
{
	FILE *f = fopen("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "r");
	long n = 0;

	if (f) {
		if (fscanf(f, "%ld", &n) != 1)
			n = 0;
		fclose(f);
	}
	return n > 0 ? VRHP_PAGE_1G : VRHP_PAGE_2M;
}

/* Find a hugetlbfs mount with this page size (or use/mount dir). */
static void find_mount(const char *dir, uint64_t ps, char *out, size_t outlen)
{
	FILE *f = setmntent("/proc/mounts", "r");
	struct mntent *me;
	char opt[64];
	char def[64];

	if (f) {
		while ((me = getmntent(f))) {
			if (strcmp(me->mnt_type, "hugetlbfs"))
				continue;
			if (mount_pagesize(me->mnt_opts) != ps)
				continue;
			if (dir && strcmp(dir, me->mnt_dir))
				continue;
			snprintf(out, outlen, "%s", me->mnt_dir);
			endmntent(f);
			return;
		}
		endmntent(f);
	}
	snprintf(def, sizeof(def), "/dev/hugepages%s", ps == VRHP_PAGE_1G ? "1G" : "2M");
	if (!dir)
		dir = def;
	if (mkdir(dir, 0755) && errno != EEXIST)
		die(1, "mkdir %s: %s", dir, strerror(errno));
	snprintf(opt, sizeof(opt), "pagesize=%s", ps == VRHP_PAGE_1G ? "1G" : "2M");
	if (mount("none", dir, "hugetlbfs", 0, opt))
		die(1, "mount -t hugetlbfs -o %s none %s: %s", opt, dir, strerror(errno));
	snprintf(out, outlen, "%s", dir);
}

static uint64_t parse_pagesize(const char *s)
{
	if (!strcmp(s, "1G"))
		return VRHP_PAGE_1G;
	if (!strcmp(s, "2M"))
		return VRHP_PAGE_2M;
	die(1, "invalid --pagesize '%s' (want 1G or 2M)", s);
}

/* Open/create a table file sized to need and map it MAP_SHARED. */
static void *map_file(const char *path, uint64_t need, int trunc, int *err)
{
	struct stat st;
	struct statfs sfs;
	void *p;
	int fd;

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		*err = errno;
		fprintf(stderr, "vrhp-agent: open %s: %s\n", path, strerror(errno));
		return NULL;
	}
	if (fstatfs(fd, &sfs) || sfs.f_type != HUGETLBFS_MAGIC) {
		fprintf(stderr, "vrhp-agent: %s is not on hugetlbfs\n", path);
		*err = EINVAL;
		close(fd);
		return NULL;
	}
	if (trunc && ftruncate(fd, 0)) {
		*err = errno;
		close(fd);
		return NULL;
	}
	if (fstat(fd, &st) || ((uint64_t)st.st_size < need && ftruncate(fd, need))) {
		*err = errno;
		fprintf(stderr, "vrhp-agent: size %s to %" PRIu64 ": %s\n", path, need,
			strerror(errno));
		close(fd);
		return NULL;
	}
	p = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED) {
		*err = errno;
		fprintf(stderr, "vrhp-agent: mmap %s (%" PRIu64 " bytes): %s (not enough free huge pages?)\n",
			path, need, strerror(errno));
		close(fd);
		return NULL;
	}
	close(fd);
	*err = 0;
	return p;
}

static int cmd_setup(int argc, char **argv)
{
	struct vrhp_info inf, after;
	struct vrhp_hp_config cfg;
	const char *dir = NULL;
	uint64_t ps = 0, need[VRHP_NR_TABLES];
	char mnt[256], path[VRHP_NR_TABLES][VRHP_PATH_MAX];
	void *maps[VRHP_NR_TABLES] = { NULL, NULL };
	int merr[VRHP_NR_TABLES] = { 0, 0 };
	uint64_t off[VRHP_NR_TABLES] = { 0, 0 }, whole_len = 0;
	void *whole = NULL;
	int reset = 0, one_file = 0, mismatched = -1, i, rc;

	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--mount") && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--pagesize") && i + 1 < argc)
			ps = parse_pagesize(argv[++i]);
		else if (!strcmp(argv[i], "--reset"))
			reset = 1;
		else if (!strcmp(argv[i], "--one-file"))
			one_file = 1;
		else
			die(1, "setup: unknown argument '%s'", argv[i]);
	}
	get_info(&inf);
	for (i = 0; i < VRHP_NR_TABLES; i++)
		require_size(&inf, i);
	if (inf.mem != VRHP_BACKEND_HUGEPAGE)
		die(2, "module is in %s mode: setup needs mem=hugepage (use migrate to move tables)",
		    bname(inf.mem));
	if (inf.layout_version != VRHP_LAYOUT)
		die(2, "module layout %u, agent layout %d: rebuild the agent", inf.layout_version,
		    VRHP_LAYOUT);
	if (!ps)
		ps = default_pagesize();
	find_mount(dir, ps, mnt, sizeof(mnt));

	memset(&cfg, 0, sizeof(cfg));
	cfg.flags = reset ? VRHP_CFG_RESET : 0;
	if (one_file) {
		/*
		 * One file "tables": flow at 0, bridge at the next 2 MiB boundary, so a
		 * flow table that leaves most of its last huge page unused shares it.
		 */
		off[VRHP_TABLE_BRIDGE] = (inf.tables[VRHP_TABLE_FLOW].file_bytes + ONE_FILE_ALIGN - 1) /
					 ONE_FILE_ALIGN * ONE_FILE_ALIGN;
		whole_len = (off[VRHP_TABLE_BRIDGE] + inf.tables[VRHP_TABLE_BRIDGE].file_bytes +
			     ps - 1) / ps * ps;
		if (snprintf(path[0], VRHP_PATH_MAX, "%s/tables", mnt) >= (int)VRHP_PATH_MAX)
			die(1, "path %s/tables too long", mnt);
		whole = map_file(path[0], whole_len, 0, &merr[0]);
		merr[1] = merr[0];
	}
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		if (one_file) {
			if (i)
				memcpy(path[i], path[0], VRHP_PATH_MAX);
			need[i] = (inf.tables[i].file_bytes + 4095) / 4096 * 4096;
			maps[i] = whole ? (char *)whole + off[i] : NULL;
		} else {
			if (snprintf(path[i], VRHP_PATH_MAX, "%s/%s", mnt, table_names[i]) >=
			    (int)VRHP_PATH_MAX)
				die(1, "path %s/%s too long", mnt, table_names[i]);
			need[i] = (inf.tables[i].file_bytes + ps - 1) / ps * ps;
			maps[i] = map_file(path[i], need[i], 0, &merr[i]);
		}
		if (!maps[i])
			continue;
		cfg.segs[cfg.nr_segs].offset = off[i];
		cfg.segs[cfg.nr_segs].uaddr = (uintptr_t)maps[i];
		cfg.segs[cfg.nr_segs].len = need[i];
		cfg.segs[cfg.nr_segs].page_size = ps;
		cfg.segs[cfg.nr_segs].table = i;
		memcpy(cfg.segs[cfg.nr_segs].path, path[i], VRHP_PATH_MAX);
		cfg.nr_segs++;
	}
	if (ioctl(ctl(), VRHP_IOC_HP_CONFIG, &cfg))
		die(2, "HP_CONFIG ioctl: %s", strerror(errno));
	get_info(&after);

	printf("{\"outcome\":\"%s\",\"outcome_code\":%u,\"reset\":%s,\"one_file\":%s,"
	       "\"mount\":", outcome_name(cfg.outcome), cfg.outcome, reset ? "true" : "false",
	       one_file ? "true" : "false");
	json_str(mnt);
	printf(",\"page_size\":%" PRIu64 ",\"tables\":{", ps);
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		const struct vrhp_table_result *r = &cfg.tables[i];
		int match = -1;

		if (maps[i] && after.tables[i].backend == VRHP_BACKEND_HUGEPAGE) {
			const struct vrhp_table_hdr *h = maps[i];

			match = h->instance == after.tables[i].instance;
			if (!match && mismatched < 0)
				mismatched = i;
		}
		printf("%s\"%s\":{\"path\":", i ? "," : "", table_names[i]);
		json_str(path[i]);
		printf(",\"offset\":%" PRIu64, off[i]);
		printf(",\"mapped\":%s,\"map_error\":\"%s\",\"backend\":\"%s\",\"action\":\"%s\","
		       "\"error\":\"%s\",\"generation\":%" PRIu64 ",\"table_bytes\":%" PRIu64
		       ",\"file_bytes\":%" PRIu64 ",\"mapped_bytes\":%" PRIu64
		       ",\"header_matches_module\":%s}",
		       maps[i] ? "true" : "false", merr[i] ? errname(merr[i]) : "OK",
		       bname(r->backend), r->action < 6 ? action_names[r->action] : "?",
		       errname(r->err), (uint64_t)r->generation,
		       (uint64_t)inf.tables[i].table_bytes, (uint64_t)inf.tables[i].file_bytes,
		       maps[i] ? need[i] : 0,
		       match < 0 ? "null" : match ? "true" : "false");
	}
	printf("}}\n");
	if (whole)
		munmap(whole, whole_len);
	for (i = 0; i < VRHP_NR_TABLES && !one_file; i++)
		if (maps[i])
			munmap(maps[i], need[i]);
	switch (cfg.outcome) {
	case VRHP_OUT_SUCCESS:
	case VRHP_OUT_ALREADY_INITIALISED:
		rc = 0;
		if (mismatched >= 0) {
			fprintf(stderr, "vrhp-agent: setup: the %s table in the module is not the "
				"one in %s (its header names another instance)\n",
				table_names[mismatched], path[mismatched]);
			rc = 2;
		}
		break;
	case VRHP_OUT_PARTIAL:
	case VRHP_OUT_INVALID_ARG_FALLBACK_IN_USE:
	case VRHP_OUT_HUGEPAGE_FAILURE_FALLBACK_IN_USE:
		fprintf(stderr, "vrhp-agent: setup degraded: %s\n", outcome_name(cfg.outcome));
		rc = 3;
		break;
	default:
		fprintf(stderr, "vrhp-agent: setup failed: %s (see dmesg)\n",
			outcome_name(cfg.outcome));
		rc = 2;
	}
	return rc;
}

/* ------------------------------------------------------------ scan */

struct scan_res {
	uint64_t used, main_used, oflow_used, oldest, newest, hist[5], chained, bytes;
	double secs;
};

static void scan_map(const struct vrhp_table_info *ti, int id, const void *base,
		     struct scan_res *r)
{
	uint32_t esz = ti->entry_size;
	uint64_t b, i, nb = ti->entries / VRHP_BUCKET_SIZE;
	double t0 = now_s();

	memset(r, 0, sizeof(*r));
	r->oldest = UINT64_MAX;
	for (b = 0; b < nb; b++) {
		unsigned int occ = 0;
		const struct vrhp_ehdr_u { uint32_t flags, next; } *eh = NULL;

		for (i = 0; i < VRHP_BUCKET_SIZE; i++) {
			const void *e = entry_at(base, esz, b * VRHP_BUCKET_SIZE + i);

			eh = e;
			r->bytes += esz;
			if (eh->flags & VRHP_EF_VALID) {
				uint64_t lu = entry_last_used(id, e);

				occ++;
				if (lu < r->oldest)
					r->oldest = lu;
				if (lu > r->newest)
					r->newest = lu;
			}
		}
		r->hist[occ]++;
		if (eh && eh->next)
			r->chained++;
		r->main_used += occ;
	}
	for (i = 0; i < ti->oentries; i++) {
		const void *e = entry_at(base, esz, ti->entries + i);

		r->bytes += esz;
		if (*(const uint32_t *)e & VRHP_EF_VALID) {
			uint64_t lu = entry_last_used(id, e);

			r->oflow_used++;
			if (lu < r->oldest)
				r->oldest = lu;
			if (lu > r->newest)
				r->newest = lu;
		}
	}
	r->secs = now_s() - t0;
	r->used = r->main_used + r->oflow_used;
	if (!r->used)
		r->oldest = 0;
}

static double mib_s(uint64_t bytes, double secs)
{
	return secs > 0 ? bytes / 1048576.0 / secs : 0.0;
}

static int cmd_scan(int argc, char **argv)
{
	struct vrhp_info inf;
	unsigned int mask = table_mask(argc, argv, 2);
	int id, first = 1;

	get_info(&inf);
	printf("{\"tables\":{");
	for (id = 0; id < VRHP_NR_TABLES; id++) {
		struct scan_res r;
		struct tmap m;

		if (!(mask & (1u << id)))
			continue;
		map_table(&inf, id, 0, &m);
		scan_map(&inf.tables[id], id, m.base, &r);
		printf("%s\"%s\":{\"backend\":\"%s\",\"source\":", first ? "" : ",",
		       table_names[id], bname(m.backend));
		json_str(m.source);
		printf(",\"generation\":%" PRIu64 ",\"entries\":%" PRIu64 ",\"oentries\":%" PRIu64
		       ",\"used\":%" PRIu64 ",\"main_used\":%" PRIu64 ",\"oflow_used\":%" PRIu64
		       ",\"oldest_last_used_ns\":%" PRIu64 ",\"newest_last_used_ns\":%" PRIu64
		       ",\"bucket_histogram\":[%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
		       ",%" PRIu64 "],\"chained_buckets\":%" PRIu64 ",\"bytes_scanned\":%" PRIu64
		       ",\"elapsed_ns\":%" PRIu64 ",\"mib_per_s\":%.1f}",
		       (uint64_t)inf.tables[id].generation, (uint64_t)inf.tables[id].entries,
		       (uint64_t)inf.tables[id].oentries, r.used, r.main_used, r.oflow_used,
		       r.oldest, r.newest, r.hist[0], r.hist[1], r.hist[2], r.hist[3], r.hist[4],
		       r.chained, r.bytes, (uint64_t)(r.secs * 1e9), mib_s(r.bytes, r.secs));
		unmap_table(&m);
		first = 0;
	}
	printf("}}\n");
	return 0;
}

/* ------------------------------------------------------------ stats */

static int cmd_stats(int argc, char **argv)
{
	unsigned int mask = table_mask(argc, argv, 2);
	int id, first = 1;

	printf("{\"tables\":{");
	for (id = 0; id < VRHP_NR_TABLES; id++) {
		struct vrhp_stats st;

		if (!(mask & (1u << id)))
			continue;
		memset(&st, 0, sizeof(st));
		st.table = id;
		if (ioctl(ctl(), VRHP_IOC_STATS, &st)) {
			int e = errno;

			printf("}}\n");
			fflush(stdout);
			die(2, "STATS %s: %s", table_names[id],
			    e == ENODEV ? "table does not exist (run setup)" : strerror(e));
		}
		printf("%s\"%s\":{\"entries\":%" PRIu64 ",\"oentries\":%" PRIu64
		       ",\"used\":%" PRIu64 ",\"main_used\":%" PRIu64 ",\"oflow_used\":%" PRIu64
		       ",\"inserts\":%" PRIu64 ",\"deletes\":%" PRIu64
		       ",\"insert_failures\":%" PRIu64 ",\"nospc_failures\":%" PRIu64
		       ",\"longest_chain\":%" PRIu64 "}",
		       first ? "" : ",", table_names[id], (uint64_t)st.entries,
		       (uint64_t)st.oentries, (uint64_t)st.used, (uint64_t)st.main_used,
		       (uint64_t)st.oflow_used, (uint64_t)st.inserts, (uint64_t)st.deletes,
		       (uint64_t)st.insert_failures, (uint64_t)st.nospc_failures,
		       (uint64_t)st.longest_chain);
		first = 0;
	}
	printf("}}\n");
	return 0;
}

/* ------------------------------------------------------------ fill */

static int do_fill(int id, uint64_t n, uint64_t seed, struct vrhp_fill *f)
{
	memset(f, 0, sizeof(*f));
	f->table = id;
	f->count = n;
	f->seed = seed;
	if (ioctl(ctl(), VRHP_IOC_FILL, f))
		return -errno;
	return 0;
}

static void print_fill(int id, const struct vrhp_fill *f)
{
	double secs = f->elapsed_ns / 1e9;

	printf("{\"table\":\"%s\",\"requested\":%" PRIu64 ",\"inserted\":%" PRIu64
	       ",\"failed\":%" PRIu64 ",\"first_fail_index\":",
	       table_names[id], (uint64_t)f->count, (uint64_t)f->inserted, (uint64_t)f->failed);
	if (f->first_fail_index == UINT64_MAX) {
		printf("null,\"first_fail_error\":null,\"first_fail_key\":null");
	} else {
		printf("%" PRIu64 ",\"first_fail_error\":\"%s\",\"first_fail_key\":{",
		       (uint64_t)f->first_fail_index, errname(f->first_fail_err));
		if (id == VRHP_TABLE_FLOW) {
			struct vrhp_flow_key k;

			memcpy(&k, f->first_fail_key, sizeof(k));
			print_flow_key(&k);
		} else {
			struct vrhp_bridge_key k;

			memcpy(&k, f->first_fail_key, sizeof(k));
			printf("\"vrf\":%u,\"mac\":", k.vrf);
			print_mac(k.mac);
		}
		putchar('}');
	}
	printf(",\"elapsed_ns\":%" PRIu64 ",\"entries_per_s\":%.0f}\n", (uint64_t)f->elapsed_ns,
	       secs > 0 ? f->count / secs : 0.0);
}

static int cmd_fill(int argc, char **argv)
{
	struct vrhp_fill f;
	int id, e;

	if (argc != 5)
		die(1, "usage: fill flow|bridge N SEED");
	id = table_id(argv[2]);
	e = do_fill(id, parse_u64(argv[3], "N"), parse_u64(argv[4], "SEED"), &f);
	if (e)
		die(2, "FILL %s: %s", table_names[id],
		    e == -ENODEV ? "table does not exist (run setup)" : strerror(-e));
	print_fill(id, &f);
	return 0;
}

/* ------------------------------------------------------------ add/del/get */

static void parse_flow_key(char **a, struct vrhp_flow_key *k)
{
	uint64_t v;

	memset(k, 0, sizeof(*k));
	k->vrf = parse_u64(a[0], "vrf");
	if (inet_pton(AF_INET, a[1], k->src) == 1 && inet_pton(AF_INET, a[2], k->dst) == 1)
		k->family = VRHP_AF_INET;
	else if (inet_pton(AF_INET6, a[1], k->src) == 1 &&
		 inet_pton(AF_INET6, a[2], k->dst) == 1)
		k->family = VRHP_AF_INET6;
	else
		die(1, "invalid addresses '%s' '%s' (both IPv4 or both IPv6)", a[1], a[2]);
	v = parse_u64(a[3], "proto");
	if (v > 255)
		die(1, "invalid proto '%s'", a[3]);
	k->proto = v;
	v = parse_u64(a[4], "sport");
	if (v > 65535)
		die(1, "invalid sport '%s'", a[4]);
	k->sport = v;
	v = parse_u64(a[5], "dport");
	if (v > 65535)
		die(1, "invalid dport '%s'", a[5]);
	k->dport = v;
}

static void parse_mac(const char *s, uint8_t *mac)
{
	unsigned int m[6];
	char c;
	int i;

	if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5], &c) != 6)
		die(1, "invalid MAC '%s'", s);
	for (i = 0; i < 6; i++) {
		if (m[i] > 255)
			die(1, "invalid MAC '%s'", s);
		mac[i] = m[i];
	}
}

static void print_flow_key(const struct vrhp_flow_key *k)
{
	char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
	int af = k->family == VRHP_AF_INET6 ? AF_INET6 : AF_INET;

	inet_ntop(af, k->src, s, sizeof(s));
	inet_ntop(af, k->dst, d, sizeof(d));
	printf("\"vrf\":%u,\"family\":%u,\"src\":\"%s\",\"dst\":\"%s\",\"proto\":%u,"
	       "\"sport\":%u,\"dport\":%u",
	       k->vrf, k->family, s, d, k->proto, k->sport, k->dport);
}

static void print_mac(const uint8_t *m)
{
	printf("\"%02x:%02x:%02x:%02x:%02x:%02x\"", m[0], m[1], m[2], m[3], m[4], m[5]);
}

static int op_fail(const char *op, const char *table, int e)
{
	const char *why = strerror(e);

	if (e == ENOSPC)
		why = "table full (bucket and overflow area)";
	else if (e == ENOENT)
		why = "no such entry";
	else if (e == EEXIST)
		why = "entry exists";
	else if (e == ENODEV)
		why = "table does not exist (run setup)";
	fprintf(stderr, "vrhp-agent: %s %s: %s (%s)\n", op, table, why, errname(e));
	return 2;
}

static int cmd_entry(int argc, char **argv)
{
	const char *op = argv[1];
	int id, add = !strcmp(op, "add"), del = !strcmp(op, "del");

	if (argc < 3)
		die(1, "usage: %s flow|bridge KEY...", op);
	id = table_id(argv[2]);
	if (id == VRHP_TABLE_FLOW) {
		struct vrhp_flow_req r;
		unsigned long cmd = add ? VRHP_IOC_FLOW_ADD : del ? VRHP_IOC_FLOW_DEL :
				    VRHP_IOC_FLOW_GET;

		if (argc != 9 + add && !(add && argc == 9))
			die(1, "usage: %s flow VRF SRC DST PROTO SPORT DPORT%s", op,
			    add ? " [ACTION]" : "");
		memset(&r, 0, sizeof(r));
		parse_flow_key(argv + 3, &r.key);
		if (add)
			r.action = argc == 10 ? parse_u64(argv[9], "action") : 1;
		if (ioctl(ctl(), cmd, &r))
			return op_fail(op, "flow", errno);
		printf("{\"table\":\"flow\",\"op\":\"%s\",", op);
		print_flow_key(&r.key);
		if (!del)
			printf(",\"index\":%u,\"action\":%u,\"flags\":%u,\"packets\":%" PRIu64
			       ",\"bytes\":%" PRIu64 ",\"last_used\":%" PRIu64,
			       r.index, r.action, r.flags, (uint64_t)r.packets,
			       (uint64_t)r.bytes, (uint64_t)r.last_used);
		printf("}\n");
	} else {
		struct vrhp_bridge_req r;
		unsigned long cmd = add ? VRHP_IOC_BRIDGE_ADD : del ? VRHP_IOC_BRIDGE_DEL :
				    VRHP_IOC_BRIDGE_GET;

		if ((add && argc != 7) || (!add && argc != 5))
			die(1, "usage: %s bridge VRF MAC%s", op, add ? " NEXTHOP LABEL" : "");
		memset(&r, 0, sizeof(r));
		r.key.vrf = parse_u64(argv[3], "vrf");
		parse_mac(argv[4], r.key.mac);
		if (add) {
			r.nexthop = parse_u64(argv[5], "nexthop");
			r.label = parse_u64(argv[6], "label");
		}
		if (ioctl(ctl(), cmd, &r))
			return op_fail(op, "bridge", errno);
		printf("{\"table\":\"bridge\",\"op\":\"%s\",\"vrf\":%u,\"mac\":", op, r.key.vrf);
		print_mac(r.key.mac);
		if (!del)
			printf(",\"index\":%u,\"nexthop\":%u,\"label\":%u,\"flags\":%u,"
			       "\"last_used\":%" PRIu64 ",\"packets\":%" PRIu64,
			       r.index, r.nexthop, r.label, r.flags, (uint64_t)r.last_used,
			       (uint64_t)r.packets);
		printf("}\n");
	}
	return 0;
}

/* ------------------------------------------------------------ dump */

static int cmp_flow(const void *a, const void *b)
{
	const struct vrhp_flow_key *x = &(*(const struct vrhp_flow_entry *const *)a)->key;
	const struct vrhp_flow_key *y = &(*(const struct vrhp_flow_entry *const *)b)->key;
	int c;

	if (x->vrf != y->vrf)
		return x->vrf < y->vrf ? -1 : 1;
	if (x->family != y->family)
		return x->family < y->family ? -1 : 1;
	c = memcmp(x->src, y->src, 16);
	if (!c)
		c = memcmp(x->dst, y->dst, 16);
	if (c)
		return c;
	if (x->proto != y->proto)
		return x->proto < y->proto ? -1 : 1;
	if (x->sport != y->sport)
		return x->sport < y->sport ? -1 : 1;
	if (x->dport != y->dport)
		return x->dport < y->dport ? -1 : 1;
	return 0;
}

static int cmp_bridge(const void *a, const void *b)
{
	const struct vrhp_bridge_key *x = &(*(const struct vrhp_bridge_entry *const *)a)->key;
	const struct vrhp_bridge_key *y = &(*(const struct vrhp_bridge_entry *const *)b)->key;

	if (x->vrf != y->vrf)
		return x->vrf < y->vrf ? -1 : 1;
	return memcmp(x->mac, y->mac, 6);
}

static int cmd_dump(int argc, char **argv)
{
	struct vrhp_info inf;
	struct tmap m;
	const void **v;
	uint64_t n = 0, i, total;
	int id;

	if (argc != 3)
		die(1, "usage: dump flow|bridge");
	id = table_id(argv[2]);
	get_info(&inf);
	map_table(&inf, id, 0, &m);
	total = inf.tables[id].entries + inf.tables[id].oentries;
	v = malloc(total * sizeof(*v));
	if (!v)
		die(1, "out of memory");
	for (i = 0; i < total; i++) {
		const void *e = entry_at(m.base, inf.tables[id].entry_size, i);

		if (*(const uint32_t *)e & VRHP_EF_VALID)
			v[n++] = e;
	}
	qsort(v, n, sizeof(*v), id == VRHP_TABLE_FLOW ? cmp_flow : cmp_bridge);
#ifdef VRHP_DEFECT_DUMP_DROPS_ONE
	n -= n > 0;	/* a planted defect of the mutation checks (kmod/README.md) */
#endif
	for (i = 0; i < n; i++) {
		if (id == VRHP_TABLE_FLOW) {
			const struct vrhp_flow_entry *e = v[i];

			putchar('{');
			print_flow_key(&e->key);
			printf(",\"action\":%u,\"packets\":%" PRIu64 ",\"bytes\":%" PRIu64
			       ",\"last_used\":%" PRIu64 "}\n",
			       e->action, (uint64_t)e->packets, (uint64_t)e->bytes,
			       (uint64_t)e->last_used);
		} else {
			const struct vrhp_bridge_entry *e = v[i];

			printf("{\"vrf\":%u,\"mac\":", e->key.vrf);
			print_mac(e->key.mac);
			printf(",\"nexthop\":%u,\"label\":%u,\"packets\":%" PRIu64
			       ",\"last_used\":%" PRIu64 "}\n",
			       e->nexthop, e->label, (uint64_t)e->packets, (uint64_t)e->last_used);
		}
	}
	free(v);
	unmap_table(&m);
	return 0;
}

/* ------------------------------------------------------------ age */

/*
 * Clear VALID, through the writable mapping, on every entry last used before `cutoff`
 * (CLOCK_REALTIME ns); returns the entries aged. Stops early when `*stop` becomes set.
 */
static uint64_t age_pass(const struct vrhp_info *inf, int id, const struct tmap *m,
			 uint64_t cutoff, uint64_t *examined, volatile sig_atomic_t *stop)
{
	uint64_t total = inf->tables[id].entries + inf->tables[id].oentries, j, aged = 0;

	*examined = 0;
	for (j = 0; j < total && !(stop && *stop); j++) {
		void *e = (char *)m->base + VRHP_HDR_SIZE + j * inf->tables[id].entry_size;
		uint32_t *flags = e;

		if (!(__atomic_load_n(flags, __ATOMIC_RELAXED) & VRHP_EF_VALID))
			continue;
		(*examined)++;
		if (entry_last_used(id, e) < cutoff) {
			__atomic_fetch_and(flags, ~VRHP_EF_VALID, __ATOMIC_RELEASE);
			aged++;
		}
	}
	return aged;
}

static int cmd_age(int argc, char **argv)
{
	struct vrhp_info inf;
	uint64_t older = 1800, cutoff;
	unsigned int mask = 3;
	int i, id, first = 1;

	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--older-than") && i + 1 < argc)
			older = parse_u64(argv[++i], "--older-than seconds");
		else
			mask = table_mask(argc, argv, i);
	}
	cutoff = now_real_ns() - older * 1000000000ull;
	get_info(&inf);
	printf("{\"older_than_s\":%" PRIu64 ",\"tables\":{", older);
	for (id = 0; id < VRHP_NR_TABLES; id++) {
		uint64_t examined = 0, aged = 0;
		struct tmap m;

		if (!(mask & (1u << id)))
			continue;
		if (inf.tables[id].backend != VRHP_BACKEND_HUGEPAGE) {
			printf("}}\n");
			fflush(stdout);
			die(2, "age: %s table backend is %s: aging writes through the mapping and needs hugepage",
			    table_names[id], bname(inf.tables[id].backend));
		}
		map_table(&inf, id, 1, &m);
		aged = age_pass(&inf, id, &m, cutoff, &examined, NULL);
		unmap_table(&m);
		printf("%s\"%s\":{\"examined\":%" PRIu64 ",\"aged\":%" PRIu64 "}",
		       first ? "" : ",", table_names[id], examined, aged);
		first = 0;
	}
	printf("}}\n");
	return 0;
}

/* ------------------------------------------------------------ run (the daemon) */

/*
 * The long-running agent: sets up or adopts the tables, keeps them mapped, ages entries
 * every interval and writes its status as one JSON document (atomically renamed).
 * It holds /dev/vrhp only for the INFO call of each cycle, so the module can be
 * removed while it runs; it then waits, and maps the new generation's tables.
 */
struct daemon {
	const char *status_path;
	const char *cutoff_path;
	const char *setup_argv[8];
	int setup_argc;
	uint64_t interval_ms;
	uint64_t older_than_s;
	uint64_t cycles, setups, remaps, module_gone, last_cycle_ns, cutoff_ns;
	int last_setup_exit, module_present;
	uint32_t module_version;
	const char *state;
	char error[VRHP_PATH_MAX + 256];
	struct {
		struct tmap map;
		int mapped;
		uint64_t generation, instance, examined, aged_total;
	} t[VRHP_NR_TABLES];
};

static volatile sig_atomic_t daemon_stop;

static void on_stop_signal(int sig)
{
	(void)sig;
	daemon_stop = 1;
}

static void daemon_unmap(struct daemon *d)
{
	int id;

	for (id = 0; id < VRHP_NR_TABLES; id++) {
		if (d->t[id].mapped)
			unmap_table(&d->t[id].map);
		d->t[id].mapped = 0;
	}
}

/* INFO through a descriptor held only for this call; 0, or the errno of open/ioctl. */
static int daemon_info(struct vrhp_info *inf)
{
	int fd = open(CTL_DEV, O_RDWR | O_CLOEXEC), e = 0;

	if (fd < 0)
		return errno;
	memset(inf, 0, sizeof(*inf));
	if (ioctl(fd, VRHP_IOC_INFO, inf))
		e = errno;
	close(fd);
	return e;
}

/* `setup` in a child, its JSON beside the status file: the child may exit anywhere. */
static void daemon_setup(struct daemon *d)
{
	char out[VRHP_PATH_MAX + 16];
	pid_t pid;
	int st;

	snprintf(out, sizeof(out), "%s.setup.json", d->status_path);
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		snprintf(d->error, sizeof(d->error), "fork for setup: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		if (!freopen(out, "w", stdout))
			_exit(1);
		ctl_fd = -1;
		exit(cmd_setup(d->setup_argc, (char **)d->setup_argv));
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	d->setups++;
	d->last_setup_exit = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	if (d->last_setup_exit)
		snprintf(d->error, sizeof(d->error), "setup exited %d (see %s)",
			 d->last_setup_exit, out);
}

static uint64_t daemon_cutoff(const struct daemon *d)
{
	uint64_t now = now_real_ns(), rel = now - d->older_than_s * 1000000000ull, abs_ns = 0;
	FILE *f;

	if (d->cutoff_path && (f = fopen(d->cutoff_path, "r"))) {
		if (fscanf(f, "%" SCNu64, &abs_ns) != 1)
			abs_ns = 0;
		fclose(f);
	}
	return abs_ns > rel ? abs_ns : rel;
}


static void daemon_cycle(struct daemon *d)
{
	struct vrhp_info inf;
	int e = daemon_info(&inf), id;

	d->error[0] = 0;
	if (e) {
		if (d->module_present)
			d->module_gone++;
		d->module_present = 0;
#if !VRHP_DEFECT_DAEMON_KEEPS_OLD_MAP	/* a planted defect (kmod/README.md) */
		daemon_unmap(d);
#endif
		d->state = "no-module";
		snprintf(d->error, sizeof(d->error), "%s: %s", CTL_DEV, errname(e));
		return;
	}
	d->module_present = 1;
	d->module_version = inf.module_version;
	if (inf.mem != VRHP_BACKEND_HUGEPAGE) {
		daemon_unmap(d);
		d->state = "not-hugepage";
		return;
	}
	if (inf.state != VRHP_STATE_READY) {
#if !VRHP_DEFECT_DAEMON_KEEPS_OLD_MAP
		daemon_unmap(d);
#endif
		d->state = "setup";
		daemon_setup(d);
		return;
	}
	d->cutoff_ns = daemon_cutoff(d);
	for (id = 0; id < VRHP_NR_TABLES; id++) {
		const struct vrhp_table_info *ti = &inf.tables[id];

		if (d->t[id].mapped && !VRHP_DEFECT_DAEMON_KEEPS_OLD_MAP &&
		    (d->t[id].generation != ti->generation || d->t[id].instance != ti->instance)) {
			unmap_table(&d->t[id].map);
			d->t[id].mapped = 0;
		}
		if (!d->t[id].mapped) {
			if (try_map_table(&inf, id, 1, &d->t[id].map, d->error, sizeof(d->error))) {
				d->state = "error";
				return;
			}
			d->t[id].mapped = 1;
			if (d->t[id].generation)
				d->remaps++;
			d->t[id].generation = ti->generation;
			d->t[id].instance = ti->instance;
		}
		d->t[id].aged_total += age_pass(&inf, id, &d->t[id].map, d->cutoff_ns,
						&d->t[id].examined, &daemon_stop);
	}
	d->state = "aging";
}

static void daemon_write_status(const struct daemon *d)
{
	char tmp[VRHP_PATH_MAX + 16];
	FILE *f;
	int id;

	snprintf(tmp, sizeof(tmp), "%s.tmp", d->status_path);
	f = fopen(tmp, "w");
	if (!f)
		die(1, "run: cannot write %s: %s", tmp, strerror(errno));
	fprintf(f, "{\"pid\":%d,\"state\":\"%s\",\"cycles\":%" PRIu64 ",\"module_version\":%u,"
		"\"setups\":%" PRIu64 ",\"last_setup_exit\":%d,\"remaps\":%" PRIu64
		",\"module_gone\":%" PRIu64 ",\"cutoff_ns\":%" PRIu64 ",\"last_cycle_ns\":%" PRIu64
		",\"error\":",
		(int)getpid(), d->state, d->cycles, d->module_version, d->setups,
		d->last_setup_exit, d->remaps, d->module_gone, d->cutoff_ns, d->last_cycle_ns);
	fjson_str(f, d->error);
	fprintf(f, ",\"tables\":{");
	for (id = 0; id < VRHP_NR_TABLES; id++)
		fprintf(f, "%s\"%s\":{\"mapped\":%s,\"generation\":%" PRIu64 ",\"instance\":%" PRIu64
			",\"examined\":%" PRIu64 ",\"aged_total\":%" PRIu64 "}",
			id ? "," : "", table_names[id], d->t[id].mapped ? "true" : "false",
			d->t[id].generation, d->t[id].instance, d->t[id].examined,
			d->t[id].aged_total);
	fprintf(f, "}}\n");
	if (fclose(f) || rename(tmp, d->status_path))
		die(1, "run: cannot write %s: %s", d->status_path, strerror(errno));
}

static int cmd_run(int argc, char **argv)
{
	static struct daemon d;
	struct sigaction sa;
	int i;

	d.interval_ms = 500;
	d.older_than_s = 1800;
	d.state = "starting";
	d.setup_argv[d.setup_argc++] = "vrhp-agent";
	d.setup_argv[d.setup_argc++] = "setup";
	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--status") && i + 1 < argc)
			d.status_path = argv[++i];
		else if (!strcmp(argv[i], "--interval-ms") && i + 1 < argc)
			d.interval_ms = parse_u64(argv[++i], "--interval-ms");
		else if (!strcmp(argv[i], "--older-than") && i + 1 < argc)
			d.older_than_s = parse_u64(argv[++i], "--older-than seconds");
		else if (!strcmp(argv[i], "--cutoff-file") && i + 1 < argc)
			d.cutoff_path = argv[++i];
		else if ((!strcmp(argv[i], "--mount") || !strcmp(argv[i], "--pagesize")) &&
			 i + 1 < argc && d.setup_argc < 6) {
			d.setup_argv[d.setup_argc++] = argv[i];
			d.setup_argv[d.setup_argc++] = argv[++i];
		} else
			die(1, "run: unknown argument '%s'", argv[i]);
	}
	if (!d.status_path)
		die(1, "usage: run --status FILE [--interval-ms MS] [--older-than S] "
		    "[--cutoff-file FILE] [--mount DIR] [--pagesize 1G|2M]");
	if (!d.interval_ms || d.interval_ms > 3600000)
		die(1, "run: --interval-ms must be 1..3600000, got %" PRIu64, d.interval_ms);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	while (!daemon_stop) {
		double t0 = now_s();
		struct timespec ts = { (time_t)(d.interval_ms / 1000),
				       (long)(d.interval_ms % 1000) * 1000000L };

		daemon_cycle(&d);
		d.cycles++;
		d.last_cycle_ns = (uint64_t)((now_s() - t0) * 1e9);
		daemon_write_status(&d);
		nanosleep(&ts, NULL);
	}
	daemon_unmap(&d);
	d.state = "stopped";
	daemon_write_status(&d);
	return 0;
}

/* ------------------------------------------------------------ migrate */

/*
 * Copy `len` bytes in 1 MiB pieces; returns the bytes copied and sets `verified` to the
 * bytes that compare equal to the source afterwards (a table written to during the
 * migration, or a short copy, shows as fewer).
 */
static uint64_t copy_verified(void *dst, const void *src, uint64_t len, uint64_t *verified)
{
	const uint64_t piece = 1 << 20;
	uint64_t off, n, copied = 0;

	for (off = 0; off < len; off += n) {
		n = len - off < piece ? len - off : piece;
		memcpy((char *)dst + off, (const char *)src + off, n);
		copied += n;
	}
	*verified = 0;
	for (off = 0; off < len; off += n) {
		n = len - off < piece ? len - off : piece;
		if (!memcmp((char *)dst + off, (const char *)src + off, n))
			*verified += n;
	}
	return copied;
}

static int cmd_migrate(int argc, char **argv)
{
	struct vrhp_info inf;
	const char *dir = NULL;
	uint64_t ps = 0;
	char mnt[256], path[VRHP_PATH_MAX];
	int i, id, first = 1;

	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--mount") && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--pagesize") && i + 1 < argc)
			ps = parse_pagesize(argv[++i]);
		else
			die(1, "migrate: unknown argument '%s'", argv[i]);
	}
	get_info(&inf);
	for (id = 0; id < VRHP_NR_TABLES; id++)
		if (inf.tables[id].backend != VRHP_BACKEND_BTABLE)
			die(2, "migrate: %s table backend is %s, need btable", table_names[id],
			    bname(inf.tables[id].backend));
	if (!ps)
		ps = default_pagesize();
	find_mount(dir, ps, mnt, sizeof(mnt));
	printf("{\"mount\":");
	json_str(mnt);
	printf(",\"page_size\":%" PRIu64 ",\"tables\":{", ps);
	for (id = 0; id < VRHP_NR_TABLES; id++) {
		uint64_t need = (inf.tables[id].file_bytes + ps - 1) / ps * ps;
		uint64_t copied, verified;
		struct scan_res r;
		struct tmap m;
		void *dst;
		int err;

		map_table(&inf, id, 0, &m);
		if (snprintf(path, sizeof(path), "%s/%s", mnt, table_names[id]) >=
		    (int)sizeof(path))
			die(1, "path %s/%s too long", mnt, table_names[id]);
		dst = map_file(path, need, 1, &err);
		if (!dst) {
			printf("}}\n");
			fflush(stdout);
			die(2, "migrate: cannot map %s: %s", path, strerror(err));
		}
		copied = copy_verified(dst, m.base, inf.tables[id].file_bytes, &verified);
		scan_map(&inf.tables[id], id, dst, &r);
		munmap(dst, need);
		unmap_table(&m);
		printf("%s\"%s\":{\"path\":", first ? "" : ",", table_names[id]);
		json_str(path);
		printf(",\"bytes_copied\":%" PRIu64 ",\"bytes_verified\":%" PRIu64
		       ",\"file_bytes\":%" PRIu64 ",\"used\":%" PRIu64 ",\"generation\":%" PRIu64 "}",
		       copied, verified, need, r.used,
		       (uint64_t)inf.tables[id].generation);
		first = 0;
	}
	printf("}}\n");
	return 0;
}

/* ------------------------------------------------------------ bench */

static uint64_t read_all(const void *p, size_t len)
{
	const volatile uint64_t *q = p;
	uint64_t s = 0;
	size_t i, n = len / 8;

	for (i = 0; i < n; i += 4)
		s += q[i] ^ q[i + 1] ^ q[i + 2] ^ q[i + 3];
	return s;
}

static int cmd_bench(int argc, char **argv)
{
	uint64_t n = argc > 2 ? parse_u64(argv[2], "N") : 100000;
	uint64_t seed = argc > 3 ? parse_u64(argv[3], "SEED") : 1;
	struct vrhp_info inf;
	struct vrhp_fill f;
	struct scan_res r;
	struct tmap m;
	uint64_t bytes, sink = 0;
	double t0, map_s, anon_s;
	char *anon;
	int e;

	e = do_fill(VRHP_TABLE_FLOW, n, seed, &f);
	if (e)
		die(2, "bench: FILL flow: %s", strerror(-e));
	get_info(&inf);
	map_table(&inf, VRHP_TABLE_FLOW, 0, &m);
	bytes = inf.tables[VRHP_TABLE_FLOW].table_bytes & ~31ull;
	scan_map(&inf.tables[VRHP_TABLE_FLOW], VRHP_TABLE_FLOW, m.base, &r);
	t0 = now_s();
	sink += read_all((char *)m.base + VRHP_HDR_SIZE, bytes);
	map_s = now_s() - t0;
	anon = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (anon == MAP_FAILED)
		die(1, "bench: anonymous buffer of %" PRIu64 " bytes: %s", bytes, strerror(errno));
	memset(anon, 1, bytes);
	t0 = now_s();
	sink += read_all(anon, bytes);
	anon_s = now_s() - t0;
	munmap(anon, bytes);
	printf("{\"fill_requested\":%" PRIu64 ",\"fill_inserted\":%" PRIu64
	       ",\"fill_entries_per_s\":%.0f,\"backend\":\"%s\",\"scan_bytes\":%" PRIu64
	       ",\"scan_mib_per_s\":%.1f,\"map_read_mib_per_s\":%.1f,"
	       "\"anon_read_mib_per_s\":%.1f,\"scan_vs_anon\":%.3f,\"map_vs_anon\":%.3f,"
	       "\"checksum\":%" PRIu64 "}\n",
	       (uint64_t)f.count, (uint64_t)f.inserted,
	       f.elapsed_ns ? f.count / (f.elapsed_ns / 1e9) : 0.0, bname(m.backend), r.bytes,
	       mib_s(r.bytes, r.secs), mib_s(bytes, map_s), mib_s(bytes, anon_s),
	       anon_s > 0 && r.secs > 0 ? mib_s(r.bytes, r.secs) / mib_s(bytes, anon_s) : 0.0,
	       anon_s > 0 && map_s > 0 ? anon_s / map_s : 0.0, sink & 0xff);
	unmap_table(&m);
	return 0;
}

/* Check that a btable mapping device refuses write access. */
static int cmd_maptest(int argc, char **argv)
{
	int id, fd, e_open, e_map, e_prot = 0;
	long pg = sysconf(_SC_PAGESIZE);
	void *p;

	if (argc != 3)
		die(1, "usage: maptest flow|bridge");
	id = table_id(argv[2]);
	fd = open(map_devs[id], O_RDWR);
	e_open = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	fd = open(map_devs[id], O_RDONLY);
	if (fd < 0)
		die(2, "open %s: %s", map_devs[id], strerror(errno));
	p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	e_map = p == MAP_FAILED ? errno : 0;
	if (p != MAP_FAILED)
		munmap(p, pg);
	p = mmap(NULL, pg, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		e_prot = -errno;
	} else {
		if (mprotect(p, pg, PROT_READ | PROT_WRITE))
			e_prot = errno;
		munmap(p, pg);
	}
	close(fd);
	printf("{\"table\":\"%s\",\"open_rdwr_error\":\"%s\",\"mmap_write_error\":\"%s\","
	       "\"mprotect_write_error\":\"%s\",\"read_only\":%s}\n",
	       table_names[id], errname(e_open), errname(e_map), errname(e_prot),
	       e_open && e_map && e_prot > 0 ? "true" : "false");
	return e_open && e_map && e_prot > 0 ? 0 : 2;
}

/* ------------------------------------------------------------ raw, pattern, remap */

/* Entries exactly as they sit in the agent's mapping, in hex. */
static int cmd_raw(int argc, char **argv)
{
	struct vrhp_info inf;
	struct tmap m;
	uint64_t idx, n, total, i;
	const unsigned char *p;
	int id;

	if (argc != 4 && argc != 5)
		die(1, "usage: raw flow|bridge INDEX [COUNT]");
	id = table_id(argv[2]);
	idx = parse_u64(argv[3], "INDEX");
	n = argc == 5 ? parse_u64(argv[4], "COUNT") : 1;
	get_info(&inf);
	map_table(&inf, id, 0, &m);
	total = inf.tables[id].entries + inf.tables[id].oentries;
	if (idx >= total || n > total - idx || n > 4096)
		die(1, "raw: entries %" PRIu64 "+%" PRIu64 " outside the table (%" PRIu64
		    " entries, at most 4096 at once)", idx, n, total);
	p = entry_at(m.base, inf.tables[id].entry_size, idx);
	printf("{\"table\":\"%s\",\"index\":%" PRIu64 ",\"count\":%" PRIu64
	       ",\"entry_size\":%u,\"backend\":\"%s\",\"source\":",
	       table_names[id], idx, n, inf.tables[id].entry_size, bname(m.backend));
	json_str(m.source);
	printf(",\"hex\":\"");
	for (i = 0; i < n * inf.tables[id].entry_size; i++)
		printf("%02x", p[i]);
	printf("\"}\n");
	unmap_table(&m);
	return 0;
}

/*
 * The module writes a pattern over the whole entries area through its own mapping
 * (page_address or vmap); the agent reads every byte back through its mapping of
 * the same memory. SEED 0 zeroes the table and checks zeroes.
 */
static int cmd_pattern(int argc, char **argv)
{
	struct vrhp_pattern pt;
	struct vrhp_info inf;
	struct tmap m;
	uint64_t off, bytes, bad_bytes = 0, bad_words = 0, first_bad = UINT64_MAX;
	double t0, secs;
	int id, b;

	if (argc != 4)
		die(1, "usage: pattern flow|bridge SEED");
	id = table_id(argv[2]);
	get_info(&inf);
	require_size(&inf, id);
	memset(&pt, 0, sizeof(pt));
	pt.table = id;
	pt.seed = parse_u64(argv[3], "SEED");
	if (ioctl(ctl(), VRHP_IOC_PATTERN, &pt))
		die(2, "PATTERN %s: %s", table_names[id],
		    errno == ENODEV ? "table does not exist (run setup)" : strerror(errno));
	map_table(&inf, id, 0, &m);
	bytes = inf.tables[id].table_bytes;
	t0 = now_s();
	for (off = 0; off + 8 <= bytes; off += 8) {
		uint64_t want = pt.seed ? VRHP_PATTERN_WORD(pt.seed, off) : 0;
		uint64_t got;

		memcpy(&got, (const char *)m.base + VRHP_HDR_SIZE + off, 8);
		if (got == want)
			continue;
		bad_words++;
		if (first_bad == UINT64_MAX)
			first_bad = off;
		for (b = 0; b < 8; b++)
			bad_bytes += ((got ^ want) >> (8 * b)) & 0xff ? 1 : 0;
	}
	secs = now_s() - t0;
	printf("{\"table\":\"%s\",\"seed\":%" PRIu64 ",\"backend\":\"%s\",\"source\":",
	       table_names[id], (uint64_t)pt.seed, bname(m.backend));
	json_str(m.source);
	printf(",\"bytes_written\":%" PRIu64 ",\"bytes_checked\":%" PRIu64
	       ",\"mismatched_words\":%" PRIu64 ",\"mismatched_bytes\":%" PRIu64
	       ",\"first_mismatch_offset\":",
	       (uint64_t)pt.bytes, off, bad_words, bad_bytes);
	if (first_bad == UINT64_MAX)
		printf("null");
	else
		printf("%" PRIu64, first_bad);
	printf(",\"kernel_write_ns\":%" PRIu64 ",\"agent_read_ns\":%" PRIu64 "}\n",
	       (uint64_t)pt.elapsed_ns, (uint64_t)(secs * 1e9));
	unmap_table(&m);
	return bad_words || pt.bytes != bytes ? 2 : 0;
}

/* Map, read, unmap N times: the char-device unmap path ("Bad page map"). */
static int cmd_remap(int argc, char **argv)
{
	struct vrhp_info inf;
	uint64_t n, i, bad = 0, sum = 0;
	double t0;
	int id;

	if (argc != 4)
		die(1, "usage: remap flow|bridge N");
	id = table_id(argv[2]);
	n = parse_u64(argv[3], "N");
	get_info(&inf);
	t0 = now_s();
	for (i = 0; i < n; i++) {
		const struct vrhp_table_hdr *h;
		struct tmap m;
		uint64_t last = inf.tables[id].entries + inf.tables[id].oentries - 1;

		map_table(&inf, id, 0, &m);
		h = m.base;
		if (h->magic != VRHP_HDR_MAGIC || h->generation != inf.tables[id].generation)
			bad++;
		sum += *(const volatile uint32_t *)entry_at(m.base, inf.tables[id].entry_size, last);
		unmap_table(&m);
	}
	printf("{\"table\":\"%s\",\"backend\":\"%s\",\"iterations\":%" PRIu64
	       ",\"bad_headers\":%" PRIu64 ",\"bytes_per_map\":%" PRIu64
	       ",\"elapsed_ns\":%" PRIu64 ",\"checksum\":%" PRIu64 "}\n",
	       table_names[id], bname(inf.tables[id].backend), n, bad,
	       (uint64_t)inf.tables[id].file_bytes, (uint64_t)((now_s() - t0) * 1e9),
	       sum & 0xff);
	return bad ? 2 : 0;
}

/* ------------------------------------------------------------ lookup */

/*
 * Look up, through the module (GET ioctl), every entry of a `dump` file and compare
 * its fields: proves the table a module adopted hashes as the one that wrote it.
 */
static int cmd_lookup(int argc, char **argv)
{
	uint64_t lines = 0, found = 0, missing = 0, mismatched = 0, first_bad = 0;
	char line[512];
	FILE *f;
	int id;

	if (argc != 4)
		die(1, "usage: lookup flow|bridge DUMPFILE");
	id = table_id(argv[2]);
	f = fopen(argv[3], "r");
	if (!f)
		die(1, "lookup: %s: %s", argv[3], strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		int ok, e;

		if (line[0] != '{')
			continue;
		lines++;
		if (id == VRHP_TABLE_FLOW) {
			struct vrhp_flow_req r;
			unsigned int vrf, fam, proto, sport, dport, action;
			unsigned long long pk, by, lu;
			char src[64], dst[64];
			char *a[6];
			char v[4][24];

			if (sscanf(line, "{\"vrf\":%u,\"family\":%u,\"src\":\"%63[^\"]\",\"dst\":\"%63[^\"]\","
				   "\"proto\":%u,\"sport\":%u,\"dport\":%u,\"action\":%u,\"packets\":%llu,"
				   "\"bytes\":%llu,\"last_used\":%llu}",
				   &vrf, &fam, src, dst, &proto, &sport, &dport, &action, &pk, &by,
				   &lu) != 11)
				die(1, "lookup: %s line %" PRIu64 " is not a flow dump line", argv[3],
				    lines);
			snprintf(v[0], sizeof(v[0]), "%u", vrf);
			snprintf(v[1], sizeof(v[1]), "%u", proto);
			snprintf(v[2], sizeof(v[2]), "%u", sport);
			snprintf(v[3], sizeof(v[3]), "%u", dport);
			a[0] = v[0]; a[1] = src; a[2] = dst; a[3] = v[1]; a[4] = v[2]; a[5] = v[3];
			memset(&r, 0, sizeof(r));
			parse_flow_key(a, &r.key);
			e = ioctl(ctl(), VRHP_IOC_FLOW_GET, &r) ? errno : 0;
			ok = !e && r.action == action && r.packets == pk && r.bytes == by &&
			     r.last_used == lu && r.key.family == fam;
		} else {
			struct vrhp_bridge_req r;
			unsigned int vrf, nh, label, mac[6], k;
			unsigned long long pk, lu;

			if (sscanf(line, "{\"vrf\":%u,\"mac\":\"%x:%x:%x:%x:%x:%x\",\"nexthop\":%u,"
				   "\"label\":%u,\"packets\":%llu,\"last_used\":%llu}",
				   &vrf, &mac[0], &mac[1], &mac[2], &mac[3], &mac[4], &mac[5], &nh,
				   &label, &pk, &lu) != 11)
				die(1, "lookup: %s line %" PRIu64 " is not a bridge dump line",
				    argv[3], lines);
			memset(&r, 0, sizeof(r));
			r.key.vrf = vrf;
			for (k = 0; k < 6; k++)
				r.key.mac[k] = mac[k];
			e = ioctl(ctl(), VRHP_IOC_BRIDGE_GET, &r) ? errno : 0;
			ok = !e && r.nexthop == nh && r.label == label && r.packets == pk &&
			     r.last_used == lu;
		}
		if (e == ENODEV)
			die(2, "lookup: %s table does not exist (run setup)", table_names[id]);
		if (ok) {
			found++;
			continue;
		}
		if (e)
			missing++;
		else
			mismatched++;
		if (!first_bad)
			first_bad = lines;
	}
	fclose(f);
	printf("{\"table\":\"%s\",\"lines\":%" PRIu64 ",\"found\":%" PRIu64 ",\"missing\":%" PRIu64
	       ",\"mismatched\":%" PRIu64 ",\"first_bad_line\":%" PRIu64 "}\n",
	       table_names[id], lines, found, missing, mismatched, first_bad);
	return missing || mismatched ? 2 : 0;
}

/* CLOCK_MONOTONIC in ns: timestamps for scripts around rmmod/insmod (no module needed) */
static int cmd_clock(int argc, char **argv)
{
	struct timespec ts;

	if (argc > 3 || (argc == 3 && strcmp(argv[2], "--realtime")))
		die(1, "usage: clock [--realtime]");
	clock_gettime(argc == 3 ? CLOCK_REALTIME : CLOCK_MONOTONIC, &ts);
	printf("%" PRIu64 "\n", (uint64_t)(ts.tv_sec * 1000000000ull + ts.tv_nsec));
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: vrhp-agent COMMAND [ARGS]\n"
		"  info\n"
		"  setup [--mount DIR] [--pagesize 1G|2M] [--reset] [--one-file]\n"
		"  scan [flow|bridge|all]\n"
		"  stats [flow|bridge|all]\n"
		"  fill flow|bridge N SEED\n"
		"  add flow VRF SRC DST PROTO SPORT DPORT [ACTION]\n"
		"  del|get flow VRF SRC DST PROTO SPORT DPORT\n"
		"  add bridge VRF MAC NEXTHOP LABEL\n"
		"  del|get bridge VRF MAC\n"
		"  dump flow|bridge\n"
		"  age [--older-than SECONDS] [flow|bridge|all]\n"
		"  migrate [--mount DIR] [--pagesize 1G|2M]\n"
		"  maptest flow|bridge\n"
		"  raw flow|bridge INDEX [COUNT]\n"
		"  pattern flow|bridge SEED\n"
		"  remap flow|bridge N\n"
		"  lookup flow|bridge DUMPFILE\n"
		"  run --status FILE [--interval-ms MS] [--older-than S] [--cutoff-file FILE]\n"
		"      [--mount DIR] [--pagesize 1G|2M]\n"
		"  clock [--realtime]\n"
		"  bench [N [SEED]]\n");
}

int main(int argc, char **argv)
{
	static char obuf[1 << 16];
	const char *c;

	setvbuf(stdout, obuf, _IOFBF, sizeof(obuf));
	if (argc < 2) {
		usage();
		return 1;
	}
	c = argv[1];
	if (!strcmp(c, "info"))
		return cmd_info();
	if (!strcmp(c, "setup"))
		return cmd_setup(argc, argv);
	if (!strcmp(c, "scan"))
		return cmd_scan(argc, argv);
	if (!strcmp(c, "stats"))
		return cmd_stats(argc, argv);
	if (!strcmp(c, "fill"))
		return cmd_fill(argc, argv);
	if (!strcmp(c, "add") || !strcmp(c, "del") || !strcmp(c, "get"))
		return cmd_entry(argc, argv);
	if (!strcmp(c, "dump"))
		return cmd_dump(argc, argv);
	if (!strcmp(c, "age"))
		return cmd_age(argc, argv);
	if (!strcmp(c, "migrate"))
		return cmd_migrate(argc, argv);
	if (!strcmp(c, "maptest"))
		return cmd_maptest(argc, argv);
	if (!strcmp(c, "bench"))
		return cmd_bench(argc, argv);
	if (!strcmp(c, "raw"))
		return cmd_raw(argc, argv);
	if (!strcmp(c, "pattern"))
		return cmd_pattern(argc, argv);
	if (!strcmp(c, "remap"))
		return cmd_remap(argc, argv);
	if (!strcmp(c, "lookup"))
		return cmd_lookup(argc, argv);
	if (!strcmp(c, "run"))
		return cmd_run(argc, argv);
	if (!strcmp(c, "clock"))
		return cmd_clock(argc, argv);
	usage();
	return 1;
}
