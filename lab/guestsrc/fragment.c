// SPDX-License-Identifier: GPL-2.0
/*
 * fragment: bring a guest's physical memory into a state where high-order
 * (default order-10) allocations fail, hold it there, and release it on demand.
 *
 * Build on the host:  gcc -static -O2 -Wall -Wextra -Werror -o fragment fragment.c
 *
 * Usage:
 *   fragment --profile P [--seed N] [--target-order O]
 *            [--max-free-blocks K | --unusable-index X]
 *            [--floor-mib M] [--timeout S] [--dir D] [--no-sysctl]
 *            [--hold --pidfile F] [--summary FILE]
 *   fragment --release --pidfile F [--timeout S]
 *   fragment --cleanup [--dir D]     (what a killed fragmenter left: queues, files, sysctls, 2 MiB pool)
 *
 * Profiles: anon-pinned, pagecache, slab, mixed (see lab/stress.py for details).
 *
 * "free blocks" of order O means the number of order-O allocations the buddy free
 * lists could serve outside ZONE_DMA: sum over orders o >= O of count[o] << (o-O).
 * The unusable index is the kernel's formula over all zones but ZONE_DMA together:
 * (free pages - pages in blocks of order >= O) / free pages (1.0 if nothing free).
 *
 * Without --hold the summary JSON goes to stdout once the target is reached (or
 * missed); the memory is then held until SIGTERM/SIGINT/SIGUSR1/SIGHUP or a line
 * (or EOF) on stdin. With --hold the process forks: the child fragments and keeps
 * holding in the background (new session, stdio on /dev/null, pid in --pidfile);
 * the parent prints the child's summary and exits. SIGTERM to the child (or
 * `fragment --release --pidfile F`) releases everything, restores the sysctls,
 * rewrites --summary with a "released" section and removes the pid file.
 *
 * First, every whole block the profile does not need is taken fast with pinned
 * anonymous memory (mlock, THP where the kernel has it), leaving --area-mib free.
 * Only that area gets the profile's own mechanism: each round fills it (anonymous
 * pages / large tmpfs files in 1 MiB writes / System V messages of two kmalloc-4k
 * objects each) until no free block of the target order is left outside ZONE_DMA,
 * or free memory outside ZONE_DMA would drop below --floor-mib (ZONE_DMA's pages
 * count in MemFree but serve no ordinary allocation; a floor on MemFree alone let
 * the OOM killer in), then keeps one page in KEEP_EVERY (a seeded offset in each
 * group; the rest MADV_DONTNEED or hole-punched in one call per group) or one
 * message in KEEP_EVERY_MSG (the others sit in a queue removed in one call). The
 * pages kept are what stops the free memory around them from merging, and the
 * summary says what they are (/proc/kpageflags) and which migratetypes the free
 * pages sit in (/proc/pagetypeinfo). Blocks left under the floor are taken by
 * mlocked transparent huge pages (order 9; target orders 9 and 10 only). The fill
 * cannot take them itself: 4 KiB allocations are served from the smallest free
 * blocks first, so the last big blocks are what is left when the floor (plus the
 * zones' high watermarks and lowmem reserves, ~25 MiB on a 5 GiB guest) stops it;
 * an order-9 allocation after the drop takes exactly those. A kernel without
 * transparent huge pages (no /sys/kernel/mm/transparent_hugepage, e.g. Debian's rt
 * flavour; madvise(MADV_*HUGEPAGE) fails there with EINVAL) gets 4 KiB pages in
 * bulk, and the summary says "thp":false; there, and wherever the THP finisher
 * leaves blocks, the finisher grows the 2 MiB hugetlb pool by as many pages as the
 * free lists hold order-9 blocks (held.pool_finish_bytes), above the same floor.
 * The target must then hold three times, 0.25 s apart (per-cpu lists drain late).
 * vm.compaction_proactiveness=0, vm.compact_unevictable_allowed=0 and
 * vm.min_free_kbytes=8192 are set for every profile unless --no-sysctl, and
 * restored on release.
 *
 * Exit status: 0 target reached, 3 target not reached (summary says why; memory
 * is still held), 2 bad input (nothing done), 1 runtime error.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif
#define TMPFS_MAGIC_ 0x01021994
#define RAMFS_MAGIC_ 0x858458f6

#define EXIT_REACHED 0
#define EXIT_ERROR 1
#define EXIT_USAGE 2
#define EXIT_MISSED 3

#define MAX_ZONES 16
#define MAX_ORDERS 16
#define PAGE 4096UL
#define THP_SIZE (2UL << 20)
/* one page in KEEP_EVERY of the profile's area is kept; one message in KEEP_EVERY_MSG */
#define KEEP_EVERY 8
#define KEEP_EVERY_MSG 64
#define MAX_BULK 64
#define BULK_STEP (512UL << 20)
#define MAX_FILES 64
#define FILE_PAGES (262144UL) /* 1 GiB files */
#define WRITE_PAGES 256       /* 1 MiB a write */
/* 48-byte msg_msg + 4048 bytes, 8-byte msg_msgseg + 4088 bytes: two kmalloc-4k objects */
#define MSG_TEXT (4048 + 4088)
#define MSG_PAGES 2
#define MSG_KEY 0x68706c00 /* "hpl\0": queues of this key range are the fragmenter's */
#define MSG_KEYS 0x10000
#define POOL_2M "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
/* what the fragmenter changed, "path value" a line, for --cleanup after a kill */
#define SAVED "/run/hplab-fragment.saved"

/* ------------------------------------------------------------------ buddyinfo */

struct zone_free {
	int node;
	char name[16];
	unsigned long count[MAX_ORDERS];
};

struct buddy {
	int nzones;
	int norders;
	struct zone_free z[MAX_ZONES];
};

static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t len = 0;
	ssize_t n;

	if (fd < 0)
		return -1;
	while (len + 1 < size && (n = read(fd, buf + len, size - 1 - len)) > 0)
		len += (size_t)n;
	close(fd);
	buf[len] = '\0';
	return (int)len;
}

static int read_buddy(struct buddy *b)
{
	char buf[8192], *line, *save = NULL;

	memset(b, 0, sizeof(*b));
	if (read_file("/proc/buddyinfo", buf, sizeof(buf)) <= 0)
		return -1;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		struct zone_free *z;
		char *p, *end;
		int n = 0;

		if (b->nzones >= MAX_ZONES)
			return -1;
		z = &b->z[b->nzones];
		if (sscanf(line, "Node %d, zone %15s", &z->node, z->name) != 2)
			return -1;
		p = strstr(line, z->name) + strlen(z->name);
		for (;;) {
			unsigned long v;

			while (*p == ' ')
				p++;
			if (!*p)
				break;
			errno = 0;
			v = strtoul(p, &end, 10);
			if (end == p || errno || n >= MAX_ORDERS)
				return -1;
			z->count[n++] = v;
			p = end;
		}
		if (b->norders && n != b->norders)
			return -1;
		b->norders = n;
		b->nzones++;
	}
	return b->nzones ? 0 : -1;
}

static bool is_dma(const struct zone_free *z)
{
	return strcmp(z->name, "DMA") == 0;
}

/* Order-`order` allocations the free lists could serve outside ZONE_DMA. */
static unsigned long free_blocks(const struct buddy *b, int order)
{
	unsigned long total = 0;

	for (int i = 0; i < b->nzones; i++) {
		if (is_dma(&b->z[i]))
			continue;
		for (int o = order; o < b->norders; o++)
			total += b->z[i].count[o] << (o - order);
	}
	return total;
}

static double unusable_index(const struct buddy *b, int order)
{
	unsigned long free_pages = 0, usable = 0;

	for (int i = 0; i < b->nzones; i++) {
		if (is_dma(&b->z[i]))
			continue;
		for (int o = 0; o < b->norders; o++) {
			free_pages += b->z[i].count[o] << o;
			if (o >= order)
				usable += b->z[i].count[o] << o;
		}
	}
	if (!free_pages)
		return 1.0;
	return (double)(free_pages - usable) / (double)free_pages;
}

/*
 * Free pages an ordinary user allocation can still get: per zone above ZONE_DMA, the
 * free pages over the high watermark plus the largest lowmem reserve that zone keeps
 * for allocations that could have used a higher zone. Buddyinfo's total overstates
 * this: on a 5 GiB guest ZONE_DMA32 keeps ~8 MiB for ZONE_NORMAL callers, and a floor
 * on the raw total let the OOM killer fire. Falls back to buddyinfo's total if
 * /proc/zoneinfo cannot be read.
 */
static unsigned long free_pages_outside_dma(const struct buddy *b)
{
	static char buf[1 << 17];
	unsigned long usable = 0, free = 0, high = 0, reserve = 0;
	bool in_zone = false, dma = false, seen = false;
	char *line, *save = NULL, *p;

	if (read_file("/proc/zoneinfo", buf, sizeof(buf)) <= 0)
		return free_blocks(b, 0);
	for (line = strtok_r(buf, "\n", &save); ; line = strtok_r(NULL, "\n", &save)) {
		if (!line || !strncmp(line, "Node ", 5)) {
			if (in_zone && !dma && free > high + reserve)
				usable += free - high - reserve;
			if (!line)
				break;
			p = strstr(line, "zone");
			in_zone = p != NULL;
			dma = p && !strcmp(p + 4 + strspn(p + 4, " "), "DMA");
			free = high = reserve = 0;
			seen = true;
			continue;
		}
		p = line + strspn(line, " ");
		if (!strncmp(p, "pages free", 10))
			free = strtoul(p + 10, NULL, 10);
		else if (!strncmp(p, "high ", 5))
			high = strtoul(p + 5, NULL, 10);
		else if (!strncmp(p, "protection: (", 13)) {
			for (p += 13; *p && *p != ')'; p += strcspn(p, ",)") + (p[strcspn(p, ",)")] == ',')) {
				unsigned long v = strtoul(p, NULL, 10);

				if (v > reserve)
					reserve = v;
			}
		}
	}
	return seen ? usable : free_blocks(b, 0);
}

/* ------------------------------------------------------------------ meminfo */

static long meminfo_kib(const char *key)
{
	char buf[8192], *p;
	size_t klen = strlen(key);

	if (read_file("/proc/meminfo", buf, sizeof(buf)) <= 0)
		return -1;
	for (p = buf; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (!strncmp(p, key, klen) && p[klen] == ':')
			return strtol(p + klen + 1, NULL, 10);
	}
	return -1;
}

/* ------------------------------------------------------------------ sysctls */

struct sysctl_setting {
	const char *name;
	const char *path;
	const char *value;
	char saved[64];
	bool present;
	bool changed;
};

static struct sysctl_setting sysctls[] = {
	{ "vm.compaction_proactiveness", "/proc/sys/vm/compaction_proactiveness", "0", "", false, false },
	{ "vm.compact_unevictable_allowed", "/proc/sys/vm/compact_unevictable_allowed", "0", "", false, false },
	{ "vm.min_free_kbytes", "/proc/sys/vm/min_free_kbytes", "8192", "", false, false },
	/*
	 * Per-cpu lists as short as they go: pages freed onto them are missing from
	 * buddyinfo, and 6.12 tunes them up to hundreds of MiB, which then merge back.
	 */
	{ "vm.percpu_pagelist_high_fraction", "/proc/sys/vm/percpu_pagelist_high_fraction",
	  "1000000", "", false, false },
};
#define NSYSCTL (sizeof(sysctls) / sizeof(sysctls[0]))

static int write_str(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, value, strlen(value));
	if (close(fd) != 0 || n != (ssize_t)strlen(value))
		return -1;
	return 0;
}

static int apply_sysctls(char *err, size_t errlen)
{
	for (size_t i = 0; i < NSYSCTL; i++) {
		struct sysctl_setting *s = &sysctls[i];
		int n = read_file(s->path, s->saved, sizeof(s->saved));

		if (n < 0)
			continue; /* not on this kernel */
		s->present = true;
		while (n > 0 && isspace((unsigned char)s->saved[n - 1]))
			s->saved[--n] = '\0';
		if (write_str(s->path, s->value)) {
			snprintf(err, errlen, "cannot write %s: %s", s->path, strerror(errno));
			return -1;
		}
		s->changed = true;
	}
	return 0;
}

static void restore_sysctls(void)
{
	for (size_t i = 0; i < NSYSCTL; i++)
		if (sysctls[i].changed && write_str(sysctls[i].path, sysctls[i].saved) == 0)
			sysctls[i].changed = false;
}

/* ------------------------------------------------------------------ options */

enum profile { P_ANON, P_PAGECACHE, P_SLAB, P_MIXED };
static const char *const profile_names[] = { "anon-pinned", "pagecache", "slab", "mixed" };

struct options {
	int profile;
	unsigned long long seed;
	int target_order;
	long max_free_blocks;    /* -1: not given */
	double unusable;         /* < 0: not given */
	long floor_mib;
	long area_mib;           /* free memory left to the profile's own mechanism */
	double timeout_s;
	const char *dir;
	const char *pidfile;
	const char *summary;
	const char *fault;       /* a planted defect: "release-hang" */
	bool hold;
	bool release;
	bool cleanup;
	bool sysctl;
	bool verbose;
};

static void usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("fragment: error: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n(run with --help for usage)\n", stderr);
	exit(EXIT_USAGE);
}

static const char usage_text[] =
	"usage: fragment --profile anon-pinned|pagecache|slab|mixed [--seed N]\n"
	"                [--target-order O] [--max-free-blocks K | --unusable-index X]\n"
	"                [--floor-mib M] [--area-mib A] [--timeout S] [--dir D] [--no-sysctl]\n"
	"                [--verbose] [--hold --pidfile F] [--summary FILE] [--fault release-hang]\n"
	"       fragment --release --pidfile F [--timeout S]\n"
	"       fragment --cleanup [--dir D]\n";

static long parse_long(const char *opt, const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end)
		usage_error("%s: '%s' is not an integer", opt, s);
	return v;
}

static double parse_double(const char *opt, const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || v != v)
		usage_error("%s: '%s' is not a number", opt, s);
	return v;
}

static void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "profile", required_argument, NULL, 'p' },
		{ "seed", required_argument, NULL, 's' },
		{ "target-order", required_argument, NULL, 'o' },
		{ "max-free-blocks", required_argument, NULL, 'k' },
		{ "unusable-index", required_argument, NULL, 'u' },
		{ "floor-mib", required_argument, NULL, 'f' },
		{ "area-mib", required_argument, NULL, 'a' },
		{ "fault", required_argument, NULL, 'F' },
		{ "cleanup", no_argument, NULL, 'C' },
		{ "timeout", required_argument, NULL, 't' },
		{ "dir", required_argument, NULL, 'd' },
		{ "pidfile", required_argument, NULL, 'P' },
		{ "summary", required_argument, NULL, 'S' },
		{ "hold", no_argument, NULL, 'H' },
		{ "release", no_argument, NULL, 'R' },
		{ "no-sysctl", no_argument, NULL, 'N' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *profile = NULL;
	int c;

	memset(o, 0, sizeof(*o));
	o->profile = -1;
	o->seed = 1;
	o->target_order = 10;
	o->max_free_blocks = -1;
	o->unusable = -1.0;
	o->floor_mib = 12;
	o->area_mib = 448;
	o->timeout_s = 600;
	o->dir = "/tmp";
	o->sysctl = true;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'p': profile = optarg; break;
		case 's': {
			char *end;

			errno = 0;
			o->seed = strtoull(optarg, &end, 0);
			if (errno || end == optarg || *end || optarg[0] == '-')
				usage_error("--seed: '%s' is not a non-negative integer", optarg);
			break;
		}
		case 'o': o->target_order = (int)parse_long("--target-order", optarg); break;
		case 'k': o->max_free_blocks = parse_long("--max-free-blocks", optarg);
			if (o->max_free_blocks < 0)
				usage_error("--max-free-blocks must be >= 0, got %s", optarg);
			break;
		case 'u': o->unusable = parse_double("--unusable-index", optarg);
			if (!(o->unusable > 0.0 && o->unusable <= 1.0))
				usage_error("--unusable-index must be in (0, 1], got %s", optarg);
			break;
		case 'f': o->floor_mib = parse_long("--floor-mib", optarg); break;
		case 'a': o->area_mib = parse_long("--area-mib", optarg); break;
		case 'F': o->fault = optarg;
			if (strcmp(optarg, "release-hang"))
				usage_error("--fault: unknown fault '%s' (release-hang)", optarg);
			break;
		case 'C': o->cleanup = true; break;
		case 't': o->timeout_s = parse_double("--timeout", optarg); break;
		case 'd': o->dir = optarg; break;
		case 'P': o->pidfile = optarg; break;
		case 'S': o->summary = optarg; break;
		case 'H': o->hold = true; break;
		case 'R': o->release = true; break;
		case 'N': o->sysctl = false; break;
		case 'v': o->verbose = true; break;
		case 'h': fputs(usage_text, stdout); exit(0);
		default:
			usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (!(o->timeout_s > 0 && o->timeout_s <= 86400))
		usage_error("--timeout must be in (0, 86400] seconds");
	if (o->release) {
		if (!o->pidfile)
			usage_error("--release needs --pidfile");
		return;
	}
	if (o->cleanup) {
		if (strlen(o->dir) > 1024 || strchr(o->dir, '\''))
			usage_error("--dir must be at most 1024 characters without a quote");
		return;
	}
	if (!profile)
		usage_error("--profile is required (anon-pinned|pagecache|slab|mixed)");
	for (int i = 0; i < 4; i++)
		if (!strcmp(profile, profile_names[i]))
			o->profile = i;
	if (o->profile < 0)
		usage_error("unknown --profile '%s' (anon-pinned|pagecache|slab|mixed)", profile);
	if (o->max_free_blocks >= 0 && o->unusable >= 0)
		usage_error("--max-free-blocks and --unusable-index are exclusive");
	if (o->max_free_blocks < 0 && o->unusable < 0)
		o->max_free_blocks = 0;
	if (o->floor_mib <= 0)
		usage_error("--floor-mib must be > 0, got %ld", o->floor_mib);
	if (o->area_mib < 16)
		usage_error("--area-mib must be >= 16, got %ld", o->area_mib);
	if (o->hold && !o->pidfile)
		usage_error("--hold needs --pidfile");
	if (o->profile != P_ANON) {
		struct stat st;

		if (strlen(o->dir) > 1024)
			usage_error("--dir is longer than 1024 characters");
		if (stat(o->dir, &st) || !S_ISDIR(st.st_mode))
			usage_error("--dir '%s' is not a directory", o->dir);
	}
}

/* Checks that need the running system; still before anything is changed. */
static void validate_against_system(const struct options *o, struct buddy *b)
{
	long total;

	if (read_buddy(b))
		usage_error("cannot parse /proc/buddyinfo");
	if (o->target_order < 1 || o->target_order >= b->norders)
		usage_error("--target-order %d is impossible: this kernel has orders 0..%d",
			    o->target_order, b->norders - 1);
	total = meminfo_kib("MemTotal");
	if (total <= 0)
		usage_error("cannot read MemTotal from /proc/meminfo");
	if (o->floor_mib * 1024 >= total)
		usage_error("--floor-mib %ld is not below MemTotal (%ld MiB)", o->floor_mib,
			    total / 1024);
}

/* ------------------------------------------------------------------ state */

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

struct region {
	char *raw;          /* the mapping; base is raw aligned to THP_SIZE */
	char *base;
	size_t size;        /* bytes reserved */
	size_t touched;     /* pages touched so far */
	size_t dropped_upto;/* pages [0, dropped_upto) already punched + locked */
	size_t held_pages;
};

/* Pinned bulk memory: every whole block that the profile's own area does not need. */
struct bulk {
	size_t pool_pages;   /* 2 MiB pages added to the hugetlb pool */
	size_t finish_pool_pages; /* of those, added by the finisher (after the drops) */
	int n;
	char *base[MAX_BULK];
	size_t size[MAX_BULK];
	size_t pages;
};

/* One page in KEEP_EVERY of the profile's area stays: it is what breaks contiguity. */
struct files {
	int fds[MAX_FILES];
	int nfiles;
	size_t pages;        /* pages written over all files */
	size_t dropped_upto;
	size_t kept;         /* pages kept */
};

struct messages {
	int keep_q;
	int drop_q;
	size_t sent;
	size_t kept;
	size_t dropped;
	int queues;          /* drop queues made so far */
};

struct state {
	struct options *o;
	unsigned long long rng;
	struct bulk bulk;
	struct region anon;
	struct region thp;
	char workdir[1200];
	bool have_workdir;
	bool tmpfs;
	struct files files;
	struct messages msg;
	int rounds;
	char reason[256];
	bool enospc;
	bool no_thp;         /* the kernel has no transparent huge pages */
	bool no_fallocate;   /* the file system cannot allocate without writing */
	bool no_populate;    /* no MADV_POPULATE_WRITE */
	double started;
	long pool_before;
	bool pool_saved;
};

static unsigned long long rng_next(struct state *s)
{
	unsigned long long x = s->rng;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	s->rng = x;
	return x;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool target_met(const struct options *o, const struct buddy *b)
{
	if (o->unusable >= 0)
		return unusable_index(b, o->target_order) >= o->unusable - 1e-9;
	return free_blocks(b, o->target_order) <= (unsigned long)o->max_free_blocks;
}

static void progress(const struct state *s, const char *phase)
{
	struct buddy b;

	if (!s->o->verbose || read_buddy(&b))
		return;
	fprintf(stderr, "fragment: %s: free order-%d blocks %lu, MemFree %ld MiB at %.1f s\n",
		phase, s->o->target_order, free_blocks(&b, s->o->target_order),
		meminfo_kib("MemFree") / 1024, now_s() - s->started);
}

/*
 * The group of KEEP_EVERY pages starting at page `g`: the page kept, at a seeded
 * offset; [g, kept) and (kept, g + KEEP_EVERY) are dropped.
 */
static size_t kept_page(struct state *s, size_t g)
{
	return g + (size_t)(rng_next(s) % KEEP_EVERY);
}

/*
 * ---- bulk: whole blocks, taken fast. First as 2 MiB huge pages added to the
 * hugetlb pool (the buddy allocator hands them out without zeroing them, and
 * compaction does not move pool pages), then, for what the pool did not take,
 * mlocked anonymous memory (THP where there is THP).
 */

static int write_atomic(const char *path, const char *text);

static void save_state(const struct state *s)
{
	char text[1024] = "";
	size_t len = 0;

	for (size_t i = 0; i < NSYSCTL && len < sizeof(text); i++)
		if (sysctls[i].changed)
			len += (size_t)snprintf(text + len, sizeof(text) - len, "%s %s\n",
						sysctls[i].path, sysctls[i].saved);
	if (s->pool_saved && len < sizeof(text))
		snprintf(text + len, sizeof(text) - len, "%s %ld\n", POOL_2M, s->pool_before);
	write_atomic(SAVED, text);
}

static long pool_pages(void)
{
	char buf[32];

	if (read_file(POOL_2M, buf, sizeof(buf)) <= 0)
		return -1;
	return strtol(buf, NULL, 10);
}

static void pool_restore(long pages)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%ld", pages);
	write_str(POOL_2M, buf);
}

/* Asks for `pages` more 2 MiB pool pages; returns how many the pool grew by. */
static long pool_take(struct state *s, long pages)
{
	char buf[64];
	long have = pool_pages(), before = have;

	if (have < 0 || pages <= 0)
		return 0;
	if (!s->pool_saved) {
		s->pool_before = have;
		s->pool_saved = true;
		save_state(s);
	}
	snprintf(buf, sizeof(buf), "%ld", have + pages);
	write_str(POOL_2M, buf);
	have = pool_pages();
	if (have > s->pool_before)
		s->bulk.pool_pages = (size_t)(have - s->pool_before);
	return have > before ? have - before : 0;
}

static int bulk_take(struct state *s, char *err, size_t errlen)
{
	struct options *o = s->o;
	long area_pages = o->area_mib * 256;
	struct buddy b;

	if (read_buddy(&b)) {
		snprintf(err, errlen, "cannot parse /proc/buddyinfo");
		return -1;
	}
	pool_take(s, ((long)free_pages_outside_dma(&b) - area_pages) / (long)(THP_SIZE / PAGE));
	progress(s, "bulk");
	while (s->bulk.n < MAX_BULK && !stop_requested) {
		long spare;
		size_t bytes;
		char *raw;

		if (read_buddy(&b)) {
			snprintf(err, errlen, "cannot parse /proc/buddyinfo");
			return -1;
		}
		spare = (long)free_pages_outside_dma(&b) - area_pages;
		if (spare < (long)(THP_SIZE / PAGE) * 2)
			break;
		bytes = (size_t)spare * PAGE;
		if (bytes > BULK_STEP)
			bytes = BULK_STEP;
		bytes &= ~(THP_SIZE - 1);
		raw = mmap(NULL, bytes + THP_SIZE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (raw == MAP_FAILED) {
			snprintf(err, errlen, "mmap %zu bytes of bulk memory: %s", bytes,
				 strerror(errno));
			return -1;
		}
		s->bulk.base[s->bulk.n] = raw;
		s->bulk.size[s->bulk.n] = bytes + THP_SIZE;
		s->bulk.n++;
		raw = (char *)(((uintptr_t)raw + THP_SIZE - 1) & ~(THP_SIZE - 1));
		if (!s->no_thp && madvise(raw, bytes, MADV_HUGEPAGE))
			s->no_thp = true; /* 4 KiB pages then: slower, same result */
		if (mlock(raw, bytes)) {
			snprintf(err, errlen, "mlock %zu bytes of bulk memory: %s", bytes,
				 strerror(errno));
			return -1;
		}
		s->bulk.pages += bytes / PAGE;
		progress(s, "bulk");
	}
	return 0;
}

/* ---- anon-pinned */

static int anon_fill(struct state *s, size_t pages)
{
	struct region *r = &s->anon;
	size_t limit = r->size / PAGE;

	if (r->touched + pages > limit)
		pages = limit - r->touched;
	if (!pages)
		return 0;
	/* populated in the kernel: no fault a page (Linux 5.14+, else touched one by one) */
	if (s->no_populate ||
	    madvise(r->base + r->touched * PAGE, pages * PAGE, MADV_POPULATE_WRITE)) {
		s->no_populate = true;
		for (size_t i = 0; i < pages; i++)
			r->base[(r->touched + i) * PAGE] = (char)(i | 1);
	}
	r->touched += pages;
	return (int)pages;
}

static int anon_drop(struct state *s, char *err, size_t errlen)
{
	struct region *r = &s->anon;
	size_t from = r->dropped_upto, n = r->touched - from, kept = 0;
	size_t next = from; /* first page not yet decided */

	if (!n)
		return 0;
	for (size_t g = from; g < r->touched; g += KEEP_EVERY) {
		size_t k = kept_page(s, g);

		if (k >= r->touched)
			k = r->touched - 1;
		if (k > next && madvise(r->base + next * PAGE, (k - next) * PAGE, MADV_DONTNEED)) {
			snprintf(err, errlen, "madvise(MADV_DONTNEED): %s", strerror(errno));
			return -1;
		}
		kept++;
		next = k + 1;
	}
	if (r->touched > next &&
	    madvise(r->base + next * PAGE, (r->touched - next) * PAGE, MADV_DONTNEED)) {
		snprintf(err, errlen, "madvise(MADV_DONTNEED): %s", strerror(errno));
		return -1;
	}
	r->held_pages += kept;
	if (mlock2(r->base + from * PAGE, n * PAGE, MLOCK_ONFAULT)) {
		snprintf(err, errlen, "mlock2(MLOCK_ONFAULT): %s", strerror(errno));
		return -1;
	}
	r->dropped_upto = r->touched;
	return 0;
}

/* ---- pagecache: large files, written in big writes, then holes punched */

static int file_for(struct state *s, size_t page, char *err, size_t errlen)
{
	int i = (int)(page / FILE_PAGES);

	while (s->files.nfiles <= i) {
		char path[PATH_MAX];
		int fd;

		if (s->files.nfiles >= MAX_FILES) {
			snprintf(err, errlen, "more than %d files of %lu MiB", MAX_FILES,
				 FILE_PAGES / 256);
			return -1;
		}
		snprintf(path, sizeof(path), "%s/file-%03d", s->workdir, s->files.nfiles);
		fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0) {
			snprintf(err, errlen, "open %.200s: %s", path, strerror(errno));
			return -1;
		}
		s->files.fds[s->files.nfiles++] = fd;
	}
	return s->files.fds[i];
}

static int pagecache_fill(struct state *s, size_t pages)
{
	static char buf[WRITE_PAGES * PAGE];
	char err[256];
	size_t made = 0;

	memset(buf, 0x5a, sizeof(buf));
	while (made < pages) {
		size_t page = s->files.pages;
		size_t n = pages - made;
		ssize_t w;
		off_t off;
		int fd = file_for(s, page, err, sizeof(err));

		if (fd < 0)
			return -1;
		if (n > WRITE_PAGES)
			n = WRITE_PAGES;
		if (n > FILE_PAGES - page % FILE_PAGES)
			n = FILE_PAGES - page % FILE_PAGES;
		/* fallocate puts the same page-cache pages in without copying into them */
		off = (off_t)(page % FILE_PAGES) * (off_t)PAGE;
		/* on a disk file system it would make unwritten extents, not page cache */
		if (s->tmpfs && !s->no_fallocate && fallocate(fd, 0, off, (off_t)(n * PAGE)) == 0) {
			w = (ssize_t)(n * PAGE);
		} else {
			if (s->tmpfs && errno == EOPNOTSUPP)
				s->no_fallocate = true;
			w = !s->tmpfs || s->no_fallocate ? pwrite(fd, buf, n * PAGE, off) : -1;
		}
		if (w < 0) {
			if (errno == ENOSPC || errno == ENOMEM) {
				snprintf(s->reason, sizeof(s->reason), "writing %.200s: %s", s->workdir,
					 strerror(errno));
				s->enospc = true;
				break;
			}
			return -1;
		}
		s->files.pages += (size_t)w / PAGE;
		made += (size_t)w / PAGE;
		if ((size_t)w < n * PAGE) {
			s->enospc = true;
			break;
		}
	}
	return (int)made;
}

/* Drop pages [from, to) of the files (never across a file's end). */
static int pagecache_drop_range(struct state *s, size_t from, size_t to, char *err,
				size_t errlen)
{
	while (from < to) {
		int fd = s->files.fds[from / FILE_PAGES];
		size_t end = (from / FILE_PAGES + 1) * FILE_PAGES;
		off_t off = (off_t)(from % FILE_PAGES) * (off_t)PAGE;
		off_t len;

		if (end > to)
			end = to;
		len = (off_t)(end - from) * (off_t)PAGE;
		if (s->tmpfs ? fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len)
			     : posix_fadvise(fd, off, len, POSIX_FADV_DONTNEED)) {
			snprintf(err, errlen, "%s: %s", s->tmpfs ? "fallocate(PUNCH_HOLE)" :
				 "posix_fadvise(DONTNEED)", strerror(errno));
			return -1;
		}
		from = end;
	}
	return 0;
}

static int pagecache_drop(struct state *s, char *err, size_t errlen)
{
	size_t from = s->files.dropped_upto, to = s->files.pages, next = from;

	if (from == to)
		return 0;
	if (!s->tmpfs)
		sync();
	for (size_t g = from; g < to; g += KEEP_EVERY) {
		size_t k = kept_page(s, g);

		if (k >= to)
			k = to - 1;
		if (k > next && pagecache_drop_range(s, next, k, err, errlen))
			return -1;
		s->files.kept++;
		next = k + 1;
	}
	if (to > next && pagecache_drop_range(s, next, to, err, errlen))
		return -1;
	s->files.dropped_upto = to;
	return 0;
}

/* ---- slab: System V messages, two kmalloc-4k objects each, in unmovable slabs */

struct msgbuf_ {
	long mtype;
	char mtext[MSG_TEXT];
};

static int msg_queue(int key, char *err, size_t errlen)
{
	struct msqid_ds ds;
	int q = msgget(key, IPC_CREAT | IPC_EXCL | 0600);

	if (q < 0 && errno == EEXIST) { /* left by a fragmenter that was killed */
		msgctl(msgget(key, 0600), IPC_RMID, NULL);
		q = msgget(key, IPC_CREAT | IPC_EXCL | 0600);
	}
	if (q < 0) {
		snprintf(err, errlen, "msgget: %s", strerror(errno));
		return -1;
	}
	if (msgctl(q, IPC_STAT, &ds) == 0) {
		ds.msg_qbytes = INT_MAX; /* the kernel keeps an int */
		if (msgctl(q, IPC_SET, &ds) == 0)
			return q;
	}
	snprintf(err, errlen, "msgctl(IPC_SET msg_qbytes): %s", strerror(errno));
	msgctl(q, IPC_RMID, NULL);
	return -1;
}

static int slab_fill(struct state *s, size_t pages)
{
	static struct msgbuf_ m = { .mtype = 1 };
	char err[256];
	size_t want = pages / MSG_PAGES + 1, made = 0;

	if (s->msg.keep_q < 0 && (s->msg.keep_q = msg_queue(MSG_KEY, err, sizeof(err))) < 0)
		return -1;
	if (s->msg.drop_q < 0) {
		s->msg.drop_q = msg_queue(MSG_KEY + 1 + s->msg.queues, err, sizeof(err));
		if (s->msg.drop_q < 0)
			return -1;
		s->msg.queues++;
	}
	while (made < want) {
		bool keep = rng_next(s) % KEEP_EVERY_MSG == 0;

		if (msgsnd(keep ? s->msg.keep_q : s->msg.drop_q, &m, sizeof(m.mtext),
			   IPC_NOWAIT)) {
			if (errno == ENOMEM || errno == EAGAIN || errno == ENOSPC) {
				snprintf(s->reason, sizeof(s->reason), "msgsnd: %s", strerror(errno));
				s->enospc = true;
				break;
			}
			return -1;
		}
		s->msg.sent++;
		if (keep)
			s->msg.kept++;
		made++;
	}
	return (int)(made * MSG_PAGES);
}

/*
 * A KASAN kernel keeps freed objects in a quarantine (up to 1/32 of RAM) before
 * their slabs can go back to the buddy allocator; shrinking a cache empties its
 * share. Elsewhere it only hands back empty slabs a moment early. Best effort.
 */
static void shrink_kmalloc_caches(void)
{
	char path[512];
	struct dirent *e;
	DIR *d = opendir("/sys/kernel/slab");

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (strncmp(e->d_name, "kmalloc", 7))
			continue;
		snprintf(path, sizeof(path), "/sys/kernel/slab/%s/shrink", e->d_name);
		write_str(path, "1");
	}
	closedir(d);
}

static int slab_drop(struct state *s, char *err, size_t errlen)
{
	struct msqid_ds ds;

	if (s->msg.drop_q < 0)
		return 0;
	if (msgctl(s->msg.drop_q, IPC_STAT, &ds) == 0)
		s->msg.dropped += ds.msg_qnum;
	if (msgctl(s->msg.drop_q, IPC_RMID, NULL)) {
		snprintf(err, errlen, "msgctl(IPC_RMID): %s", strerror(errno));
		return -1;
	}
	s->msg.drop_q = -1;
	shrink_kmalloc_caches();
	return 0;
}

/* ---- finisher: order-9 THP faults take the last big blocks the fill left */

static int thp_finish(struct state *s, double deadline, char *err, size_t errlen)
{
	struct options *o = s->o;
	struct region *r = &s->thp;
	struct buddy b;
	size_t before, limit;
	long huge_kib;

	if (o->target_order < 9 || s->no_thp || read_buddy(&b))
		return 0;
	if (target_met(o, &b))
		return 0;
	if (!r->base) {
		char *raw;

		r->size = 256UL << 20;
		raw = mmap(NULL, r->size + THP_SIZE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (raw == MAP_FAILED) {
			snprintf(err, errlen, "mmap for THP: %s", strerror(errno));
			return -1;
		}
		r->raw = raw;
		r->base = (char *)(((uintptr_t)raw + THP_SIZE - 1) & ~(THP_SIZE - 1));
		if (madvise(r->base, r->size, MADV_HUGEPAGE)) {
			s->no_thp = true; /* no THP in this kernel: later rounds do the work */
			return 0;
		}
	}
	before = r->touched;
	limit = (free_blocks(&b, 9) + 8) * (THP_SIZE / PAGE);
	while (r->touched - before < limit && (r->touched + THP_SIZE / PAGE) * PAGE <= r->size) {
		if (stop_requested || now_s() > deadline || read_buddy(&b) || target_met(o, &b))
			break;
		if ((long)free_pages_outside_dma(&b) - o->floor_mib * 256 < (long)(THP_SIZE / PAGE))
			break;
		huge_kib = meminfo_kib("AnonHugePages");
		for (size_t i = 0; i < THP_SIZE / PAGE; i++)
			r->base[(r->touched + i) * PAGE] = 1;
		if (meminfo_kib("AnonHugePages") - huge_kib < (long)(THP_SIZE / 1024)) {
			/* 4 KiB pages scattered among the blockers: give them back, the pool finishes */
			madvise(r->base + r->touched * PAGE, THP_SIZE, MADV_DONTNEED);
			break;
		}
		r->touched += THP_SIZE / PAGE;
	}
	if (r->touched > before &&
	    mlock2(r->base + before * PAGE, (r->touched - before) * PAGE, MLOCK_ONFAULT)) {
		snprintf(err, errlen, "mlock2 THP: %s", strerror(errno));
		return -1;
	}
	r->held_pages = r->touched;
	return 0;
}

/*
 * ---- finisher without THP: the same order-9 allocations, as 2 MiB pages added to the
 * hugetlb pool (what bulk_take does, so it works wherever the bulk phase did). It asks
 * for as many pages as the free lists have order-9 blocks outside ZONE_DMA, so each
 * is served from a free block without compaction, and never takes free memory above
 * the watermarks below the floor. Runs only while the target is not met, so after a
 * THP finisher that did the job it does nothing.
 */
static void pool_finish(struct state *s, double deadline)
{
	struct options *o = s->o;
	struct buddy b;

	if (o->target_order < 9)
		return;
	for (int pass = 0; pass < 4; pass++) {
		long want, room, got;

		if (stop_requested || now_s() > deadline || read_buddy(&b) || target_met(o, &b))
			return;
		want = (long)free_blocks(&b, 9);
		room = ((long)free_pages_outside_dma(&b) - o->floor_mib * 256) /
		       (long)(THP_SIZE / PAGE);
		if (want > room)
			want = room;
		if (want <= 0)
			return;
		got = pool_take(s, want);
		s->bulk.finish_pool_pages += (size_t)got;
		progress(s, "finish-pool");
		if (got < want)
			return; /* the rest is not in free blocks: no compaction for it */
	}
}

/* Whatever the fill left of the target order: THP faults where there is THP, then the pool. */
static int finish(struct state *s, double deadline, char *err, size_t errlen)
{
	if (thp_finish(s, deadline, err, errlen))
		return -1;
	pool_finish(s, deadline);
	return 0;
}

/* ---- what keeps the free memory from merging: /proc/kpageflags, /proc/pagetypeinfo */

#define KPF_LRU 5
#define KPF_SLAB 7
#define KPF_BUDDY 10
#define KPF_ANON 12
#define KPF_HUGE 17
#define KPF_NOPAGE 20
#define KPF_PGTABLE 26

enum blocker_kind { B_SLAB, B_ANON, B_FILE, B_PGTABLE, B_HUGETLB, B_OTHER, NBLOCKER };
static const char *const blocker_names[] = { "slab", "anon", "file", "pgtable", "hugetlb",
					     "other" };
#define MAX_MIGRATETYPES 8

struct blockers {
	bool valid;
	char error[128];
	double seconds;
	unsigned long blocks;        /* target-order blocks outside ZONE_DMA */
	unsigned long mixed_blocks;  /* of those, with free and used pages */
	unsigned long pages[NBLOCKER];
	unsigned long blocks_with[NBLOCKER]; /* mixed blocks holding pages of each kind */
	int ntypes;
	char type_name[MAX_MIGRATETYPES][24];
	unsigned long free_pages[MAX_MIGRATETYPES]; /* free pages outside ZONE_DMA */
	unsigned long pageblocks[MAX_MIGRATETYPES]; /* pageblocks outside ZONE_DMA */
};

static int blocker_kind(uint64_t f)
{
	if (f & (1ULL << KPF_SLAB))
		return B_SLAB;
	if (f & (1ULL << KPF_PGTABLE))
		return B_PGTABLE;
	if (f & (1ULL << KPF_ANON))
		return B_ANON;
	if (f & (1ULL << KPF_HUGE))
		return B_HUGETLB;
	if (f & (1ULL << KPF_LRU))
		return B_FILE;
	return B_OTHER;
}

/* ZONE_DMA's end pfn from /proc/zoneinfo (0 when there is none). */
static unsigned long dma_end_pfn(void)
{
	static char buf[1 << 17];
	char *p;

	if (read_file("/proc/zoneinfo", buf, sizeof(buf)) <= 0)
		return 0;
	p = strstr(buf, "zone      DMA\n");
	if (!p)
		return 0;
	p = strstr(p, "spanned");
	return p ? strtoul(p + 7, NULL, 10) + 1 : 0;
}

static int type_index(struct blockers *r, const char *name)
{
	for (int i = 0; i < r->ntypes; i++)
		if (!strcmp(r->type_name[i], name))
			return i;
	if (r->ntypes >= MAX_MIGRATETYPES)
		return -1;
	snprintf(r->type_name[r->ntypes], sizeof(r->type_name[0]), "%s", name);
	return r->ntypes++;
}

static void read_pagetypeinfo(struct blockers *r)
{
	static char buf[1 << 16];
	char *line, *save = NULL;
	bool counts = false;

	if (read_file("/proc/pagetypeinfo", buf, sizeof(buf)) <= 0)
		return;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char zone[16], type[24];
		int node, used = 0, i;

		if (!strncmp(line, "Number of mixed blocks", 22))
			break; /* page_owner's second table has the same shape */
		if (!strncmp(line, "Number of blocks type", 21)) {
			counts = true;
			for (char *p = line + 21; sscanf(p, "%23s%n", type, &used) == 1; p += used)
				type_index(r, type);
			continue;
		}
		if (!counts && sscanf(line, "Node %d, zone %15[^,], type %23s%n", &node, zone,
				      type, &used) == 3) {
			char *p = line + used, *z = zone + strspn(zone, " ");
			unsigned long v;
			int o = 0, n;

			if (!strcmp(z, "DMA") || (i = type_index(r, type)) < 0)
				continue;
			/* counts of 100000 and more are printed as ">100000" */
			while (sscanf(p, " >%lu%n", &v, &n) == 1 || sscanf(p, "%lu%n", &v, &n) == 1) {
				r->free_pages[i] += v << o++;
				p += n;
			}
		} else if (counts && sscanf(line, "Node %d, zone %15s%n", &node, zone, &used) == 2) {
			char *p = line + used;
			unsigned long v;
			int n;

			if (!strcmp(zone, "DMA"))
				continue;
			for (i = 0; i < r->ntypes && sscanf(p, "%lu%n", &v, &n) == 1; i++, p += n)
				r->pageblocks[i] += v;
		}
	}
}

static void find_blockers(struct blockers *r, int order)
{
	const size_t per = 1UL << order;
	static uint64_t flags[1 << 17];
	unsigned long pfn = dma_end_pfn();
	double t0 = now_s();
	int fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);

	memset(r, 0, sizeof(*r));
	if (fd < 0) {
		snprintf(r->error, sizeof(r->error), "/proc/kpageflags: %s", strerror(errno));
		return;
	}
	pfn = (pfn + per - 1) & ~(per - 1);
	for (;;) {
		ssize_t n = pread(fd, flags, sizeof(flags), (off_t)(pfn * sizeof(flags[0])));
		size_t got;

		if (n < 0) {
			snprintf(r->error, sizeof(r->error), "/proc/kpageflags: %s",
				 strerror(errno));
			close(fd);
			return;
		}
		got = (size_t)n / sizeof(flags[0]) / per * per;
		if (!got)
			break;
		for (size_t b = 0; b < got; b += per) {
			unsigned long used[NBLOCKER] = { 0 };
			bool has_free = false, has_used = false, hole = false;

			for (size_t i = b; i < b + per; i++) {
				uint64_t f = flags[i];

				if (f & (1ULL << KPF_NOPAGE)) {
					hole = true;
					break;
				}
				if (f & (1ULL << KPF_BUDDY))
					has_free = true;
				else if (f) {
					used[blocker_kind(f)]++;
					has_used = true;
				}
			}
			if (hole)
				continue;
			r->blocks++;
			if (has_free && has_used) {
				r->mixed_blocks++;
				for (int k = 0; k < NBLOCKER; k++) {
					r->pages[k] += used[k];
					r->blocks_with[k] += used[k] > 0;
				}
			}
		}
		pfn += got;
	}
	close(fd);
	read_pagetypeinfo(r);
	r->seconds = now_s() - t0;
	r->valid = true;
}

/* ---- release */

static void release_all(struct state *s)
{
	for (int i = 0; i < s->bulk.n; i++)
		munmap(s->bulk.base[i], s->bulk.size[i]);
	s->bulk.n = 0;
	if (s->anon.base) {
		munmap(s->anon.base, s->anon.size);
		s->anon.base = NULL;
	}
	if (s->thp.raw) {
		munmap(s->thp.raw, s->thp.size + THP_SIZE);
		s->thp.raw = s->thp.base = NULL;
	}
	if (s->msg.keep_q >= 0)
		msgctl(s->msg.keep_q, IPC_RMID, NULL);
	if (s->msg.drop_q >= 0)
		msgctl(s->msg.drop_q, IPC_RMID, NULL);
	s->msg.keep_q = s->msg.drop_q = -1;
	for (int i = 0; i < s->files.nfiles; i++)
		close(s->files.fds[i]);
	if (s->have_workdir) {
		char path[PATH_MAX];

		for (int i = 0; i < s->files.nfiles; i++) {
			snprintf(path, sizeof(path), "%s/file-%03d", s->workdir, i);
			unlink(path);
		}
		rmdir(s->workdir);
		s->have_workdir = false;
	}
	s->files.nfiles = 0;
	if (s->pool_saved) {
		pool_restore(s->pool_before);
		s->pool_saved = false;
	}
	restore_sysctls();
	unlink(SAVED);
}

/*
 * What a fragmenter killed before it could release leaves behind: its message
 * queues (they outlive the process) and its work directories under `dir`.
 */
static int do_cleanup(const struct options *o)
{
	struct msqid_ds ds;
	int removed = 0, max = msgctl(0, MSG_INFO, (struct msqid_ds *)(void *)&ds);
	char cmd[1400];

	for (int i = 0; i <= max; i++) {
		int q = msgctl(i, MSG_STAT, &ds);

		if (q >= 0 && ds.msg_perm.__key >= MSG_KEY &&
		    ds.msg_perm.__key < MSG_KEY + MSG_KEYS && msgctl(q, IPC_RMID, NULL) == 0)
			removed++;
	}
	if (read_file(SAVED, cmd, sizeof(cmd)) > 0) {
		char *line, *save = NULL;

		for (line = strtok_r(cmd, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			char *value = strchr(line, ' ');

			if (!value || (strncmp(line, "/proc/sys/vm/", 13) &&
				       strncmp(line, "/sys/kernel/mm/hugepages/", 25)))
				continue;
			*value++ = '\0';
			write_str(line, value);
		}
		unlink(SAVED);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'/hplab-fragment.*", o->dir);
	printf("{\"cleanup\":true,\"queues_removed\":%d,\"dirs_removed\":%s}\n", removed,
	       system(cmd) == 0 ? "true" : "false");
	return 0;
}

/* ------------------------------------------------------------------ JSON */

static void json_buddy(FILE *f, const struct buddy *b)
{
	fputc('[', f);
	for (int i = 0; i < b->nzones; i++) {
		fprintf(f, "%s{\"node\":%d,\"zone\":\"%s\",\"free\":[", i ? "," : "",
			b->z[i].node, b->z[i].name);
		for (int o = 0; o < b->norders; o++)
			fprintf(f, "%s%lu", o ? "," : "", b->z[i].count[o]);
		fputs("]}", f);
	}
	fputc(']', f);
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

struct result {
	struct blockers blockers;
	long free_outside_dma_kib;
	bool reached;
	double elapsed;
	struct buddy before, after;
	long memfree_before, memfree_after;
	pid_t pid;
};

static char *summary_json(struct state *s, struct result *res, const struct buddy *released,
			  double release_elapsed)
{
	struct options *o = s->o;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	unsigned long long anon_bytes = (unsigned long long)s->anon.held_pages * PAGE;
	unsigned long long thp_bytes = (unsigned long long)s->thp.held_pages * PAGE;
	unsigned long long finish_bytes = (unsigned long long)s->bulk.finish_pool_pages * THP_SIZE;
	unsigned long long bulk_bytes = (unsigned long long)s->bulk.pages * PAGE +
					(unsigned long long)s->bulk.pool_pages * THP_SIZE -
					finish_bytes;
	unsigned long long file_bytes = (unsigned long long)s->files.kept * PAGE;
	unsigned long long msg_bytes = (unsigned long long)s->msg.kept * MSG_PAGES * PAGE;
	const struct blockers *bl = &res->blockers;

	if (!f)
		return NULL;
	fprintf(f, "{\"tool\":\"hplab-fragment\",\"schema\":3,\"profile\":\"%s\",\"seed\":%llu,",
		profile_names[o->profile], o->seed);
	fprintf(f, "\"target\":{\"order\":%d,", o->target_order);
	if (o->unusable >= 0)
		fprintf(f, "\"max_free_blocks\":null,\"unusable_index\":%.3f},", o->unusable);
	else
		fprintf(f, "\"max_free_blocks\":%ld,\"unusable_index\":null},", o->max_free_blocks);
	fprintf(f, "\"floor_mib\":%ld,\"timeout_s\":%.1f,\"reached\":%s,\"reason\":",
		o->floor_mib, o->timeout_s, res->reached ? "true" : "false");
	if (res->reached)
		fputs("null", f);
	else
		json_string(f, s->reason);
	fprintf(f, ",\"elapsed_s\":%.3f,\"rounds\":%d,", res->elapsed, s->rounds);
	fprintf(f, "\"free_blocks_before\":%lu,\"free_blocks_after\":%lu,",
		free_blocks(&res->before, o->target_order), free_blocks(&res->after, o->target_order));
	fprintf(f, "\"unusable_index_before\":%.3f,\"unusable_index_after\":%.3f,",
		unusable_index(&res->before, o->target_order),
		unusable_index(&res->after, o->target_order));
	fprintf(f, "\"memfree_kib_before\":%ld,\"memfree_kib_after\":%ld,", res->memfree_before,
		res->memfree_after);
	fprintf(f, "\"free_outside_dma_kib_after\":%ld,\"area_mib\":%ld,", res->free_outside_dma_kib,
		o->area_mib);
	fprintf(f, "\"thp\":%s,", s->no_thp ? "false" : "true");
	fputs("\"blockers\":", f);
	if (!bl->valid) {
		fputs("{\"error\":", f);
		json_string(f, bl->error);
		fputs("},", f);
	} else {
		fprintf(f, "{\"seconds\":%.3f,\"blocks\":%lu,\"mixed_blocks\":%lu,\"pages\":{",
			bl->seconds, bl->blocks, bl->mixed_blocks);
		for (int k = 0; k < NBLOCKER; k++)
			fprintf(f, "%s\"%s\":%lu", k ? "," : "", blocker_names[k], bl->pages[k]);
		fputs("},\"blocks_with\":{", f);
		for (int k = 0; k < NBLOCKER; k++)
			fprintf(f, "%s\"%s\":%lu", k ? "," : "", blocker_names[k],
				bl->blocks_with[k]);
		fputs("},\"free_pages_by_migratetype\":{", f);
		for (int i = 0; i < bl->ntypes; i++)
			fprintf(f, "%s\"%s\":%lu", i ? "," : "", bl->type_name[i], bl->free_pages[i]);
		fputs("},\"pageblocks_by_migratetype\":{", f);
		for (int i = 0; i < bl->ntypes; i++)
			fprintf(f, "%s\"%s\":%lu", i ? "," : "", bl->type_name[i], bl->pageblocks[i]);
		fputs("}},", f);
	}
	fputs("\"buddyinfo_before\":", f);
	json_buddy(f, &res->before);
	fputs(",\"buddyinfo_after\":", f);
	json_buddy(f, &res->after);
	fprintf(f, ",\"bytes_held\":%llu,",
		bulk_bytes + anon_bytes + thp_bytes + finish_bytes + file_bytes + msg_bytes);
	fprintf(f, "\"held\":{\"bulk_bytes\":%llu,\"anon_bytes\":%llu,\"thp_bytes\":%llu,"
		"\"pool_finish_bytes\":%llu,"
		"\"pagecache_files\":%d,\"pagecache_bytes\":%llu,\"slab_entries\":%zu,"
		"\"slab_bytes\":%llu},", bulk_bytes, anon_bytes, thp_bytes, finish_bytes,
		s->files.nfiles, file_bytes, s->msg.kept, msg_bytes);
	fputs("\"dir\":", f);
	if (s->workdir[0])
		json_string(f, s->workdir);
	else
		fputs("null", f);
	fprintf(f, ",\"drop_method\":\"%s\",", o->profile == P_ANON ? "madv_dontneed+mlock2_onfault" :
		o->profile == P_SLAB ? "msgctl_rmid" :
		o->profile == P_PAGECACHE ? (s->tmpfs ? "punch_hole" : "fadvise_dontneed") : "mixed");
	fputs("\"sysctl_saved\":{", f);
	for (size_t i = 0, first = 1; i < NSYSCTL; i++) {
		if (!sysctls[i].present || !o->sysctl)
			continue;
		fprintf(f, "%s\"%s\":", first ? "" : ",", sysctls[i].name);
		json_string(f, sysctls[i].saved);
		first = 0;
	}
	fprintf(f, "},\"hold\":%s,\"pid\":%ld,\"released\":", o->hold ? "true" : "false",
		(long)res->pid);
	if (released) {
		fprintf(f, "{\"elapsed_s\":%.3f,\"free_blocks\":%lu,\"buddyinfo\":", release_elapsed,
			free_blocks(released, o->target_order));
		json_buddy(f, released);
		fputc('}', f);
	} else {
		fputs("null", f);
	}
	fputs("}\n", f);
	fclose(f);
	return text;
}

static int write_atomic(const char *path, const char *text)
{
	char tmp[PATH_MAX];
	int fd;
	ssize_t n;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	n = write(fd, text, strlen(text));
	if (close(fd) || n != (ssize_t)strlen(text))
		return -1;
	return rename(tmp, path);
}

/* ------------------------------------------------------------------ engine */

static int pick_kind(struct state *s)
{
	if (s->o->profile != P_MIXED)
		return s->o->profile;
	return (int)(rng_next(s) % 3); /* P_ANON, P_PAGECACHE, P_SLAB */
}

/*
 * One round: fill until no free block of the target order is left outside
 * ZONE_DMA (or the MemFree floor / timeout / ENOSPC stops it), then drop every
 * other page / file / entry of what this round added.
 */
static int run_round(struct state *s, double deadline, char *err, size_t errlen, bool *progress)
{
	struct options *o = s->o;
	long floor_kib = o->floor_mib * 1024;
	struct buddy b;
	size_t filled = 0;

	*progress = false;
	for (;;) {
		long memfree, headroom_pages;
		size_t chunk;
		int kind, got;

		if (stop_requested) {
			snprintf(s->reason, sizeof(s->reason), "interrupted by a signal");
			break;
		}
		if (now_s() > deadline) {
			snprintf(s->reason, sizeof(s->reason), "timeout after %.0f s", o->timeout_s);
			break;
		}
		if (read_buddy(&b)) {
			snprintf(err, errlen, "cannot parse /proc/buddyinfo");
			return -1;
		}
		if (free_blocks(&b, o->target_order) == 0)
			break;
		memfree = meminfo_kib("MemFree");
		/* ZONE_DMA's free pages count in MemFree but serve no ordinary allocation */
		headroom_pages = (long)free_pages_outside_dma(&b) - floor_kib / 4;
		if ((memfree - floor_kib) / 4 < headroom_pages)
			headroom_pages = (memfree - floor_kib) / 4;
		if (headroom_pages < 64) {
			snprintf(s->reason, sizeof(s->reason),
				 "free-memory floor of %ld MiB reached with %lu free order-%d blocks left",
				 o->floor_mib, free_blocks(&b, o->target_order), o->target_order);
			break;
		}
		chunk = free_pages_outside_dma(&b) / 4;
		if (chunk < 64)
			chunk = 64;
		if (chunk > 16384)
			chunk = 16384;
		if (chunk > (size_t)headroom_pages)
			chunk = (size_t)headroom_pages;
		kind = pick_kind(s);
		if (o->verbose)
			fprintf(stderr, "fragment: fill: free order-%d blocks %lu, MemFree %ld MiB "
				"at %.1f s (round %d, %s)\n", o->target_order,
				free_blocks(&b, o->target_order), memfree / 1024,
				now_s() - s->started, s->rounds, profile_names[kind]);
		if (kind == P_ANON)
			got = anon_fill(s, chunk);
		else if (kind == P_PAGECACHE)
			got = pagecache_fill(s, chunk);
		else
			got = slab_fill(s, chunk);
		if (got < 0) {
			snprintf(err, errlen, "%s: %s", kind == P_PAGECACHE ? "writing files" :
				 kind == P_SLAB ? "sending messages" : "touching pages",
				 strerror(errno));
			return -1;
		}
		filled += (size_t)got;
		if (s->enospc) {
			if (!s->reason[0])
				snprintf(s->reason, sizeof(s->reason), "no space left in %.200s",
					 s->workdir);
			break;
		}
		if (got == 0 && o->profile == P_ANON) {
			snprintf(s->reason, sizeof(s->reason), "address space reserve exhausted");
			break;
		}
	}
	if (filled)
		*progress = true;
	if (anon_drop(s, err, errlen) || pagecache_drop(s, err, errlen) ||
	    slab_drop(s, err, errlen) || finish(s, deadline, err, errlen))
		return -1;
	s->rounds++;
	return 0;
}

/*
 * Pages freed a moment ago sit on per-cpu lists and can merge back into a big
 * block when drained: the target counts only if it still holds 3 times in a row,
 * a quarter of a second apart (re-running the finisher in between).
 */
/*
 * Per-cpu page lists hold pages they took from big blocks; buddyinfo does not show
 * them, and they merge back once the list overflows. Overflow it on purpose:
 * fault in and free a scratch area larger than any per-cpu list, so the borrowed
 * pages go home and the check below sees the real state.
 */
static void flush_pcp(struct state *s)
{
	const size_t pages = 8192;
	struct buddy b;
	char *scratch;

	if (read_buddy(&b) ||
	    (long)free_pages_outside_dma(&b) - s->o->floor_mib * 256 < (long)(2 * pages))
		return;
	scratch = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (scratch == MAP_FAILED)
		return;
	if (!s->no_thp)
		madvise(scratch, pages * PAGE, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < pages; i++)
		scratch[i * PAGE] = 1;
	munmap(scratch, pages * PAGE);
}

static bool settle(struct state *s, double deadline, char *err, size_t errlen)
{
	struct buddy b;
	int stable = 0;

	for (int i = 0; i < 20 && stable < 3; i++) {
		usleep(250000);
		flush_pcp(s);
		if (read_buddy(&b))
			return false;
		if (target_met(s->o, &b)) {
			stable++;
			continue;
		}
		stable = 0;
		if (now_s() > deadline || stop_requested || finish(s, deadline, err, errlen))
			return false;
	}
	return stable >= 3;
}

static int fragment(struct state *s, struct result *res, char *err, size_t errlen)
{
	struct options *o = s->o;
	double start = now_s(), deadline = start + o->timeout_s;

	s->started = start;
	s->no_thp = access("/sys/kernel/mm/transparent_hugepage", F_OK) != 0;
	long total_kib = meminfo_kib("MemTotal");
	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };

	setrlimit(RLIMIT_MEMLOCK, &unlimited);
	res->memfree_before = meminfo_kib("MemFree");
	if (read_buddy(&res->before)) {
		snprintf(err, errlen, "cannot parse /proc/buddyinfo");
		return -1;
	}
	if (o->sysctl && apply_sysctls(err, errlen))
		return -1;
	save_state(s);
	if (o->profile == P_ANON || o->profile == P_MIXED) {
		s->anon.size = (size_t)total_kib * 1024;
		s->anon.base = mmap(NULL, s->anon.size, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (s->anon.base == MAP_FAILED) {
			s->anon.base = NULL;
			snprintf(err, errlen, "mmap %zu bytes: %s", s->anon.size, strerror(errno));
			return -1;
		}
		if (!s->no_thp)
			madvise(s->anon.base, s->anon.size, MADV_NOHUGEPAGE);
	}
	if (o->profile != P_ANON) {
		struct statfs sf;

		snprintf(s->workdir, sizeof(s->workdir), "%s/hplab-fragment.%ld", o->dir,
			 (long)getpid());
		if (mkdir(s->workdir, 0700)) {
			snprintf(err, errlen, "mkdir %.300s: %s", s->workdir, strerror(errno));
			return -1;
		}
		s->have_workdir = true;
		if (statfs(s->workdir, &sf) == 0)
			s->tmpfs = sf.f_type == TMPFS_MAGIC_ || sf.f_type == RAMFS_MAGIC_;
	}
	if (bulk_take(s, err, errlen))
		return -1;

	for (;;) {
		bool progress;
		struct buddy b;

		if (run_round(s, deadline, err, errlen, &progress))
			return -1;
		if (read_buddy(&b)) {
			snprintf(err, errlen, "cannot parse /proc/buddyinfo");
			return -1;
		}
		if (stop_requested)
			break;
		if (target_met(o, &b) && settle(s, deadline, err, errlen)) {
			res->reached = true;
			break;
		}
		if (s->reason[0])
			break;
		if (!progress) {
			snprintf(s->reason, sizeof(s->reason),
				 "no progress: %lu free order-%d blocks left and nothing more to fill",
				 free_blocks(&b, o->target_order), o->target_order);
			break;
		}
	}
	if (res->reached)
		s->reason[0] = '\0';
	else if (!s->reason[0])
		snprintf(s->reason, sizeof(s->reason), "target not met");
	res->elapsed = now_s() - start;
	res->memfree_after = meminfo_kib("MemFree");
	read_buddy(&res->after);
	res->free_outside_dma_kib = (long)free_blocks(&res->after, 0) * 4;
	progress(s, res->reached ? "reached" : "missed");
	if (stop_requested)
		snprintf(res->blockers.error, sizeof(res->blockers.error),
			 "not looked for: interrupted");
	else
		find_blockers(&res->blockers, o->target_order);
	return 0;
}

/* ------------------------------------------------------------------ release */

static bool process_alive(pid_t pid)
{
	char path[64], buf[512], *p;

	if (kill(pid, 0) && errno == ESRCH)
		return false;
	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	if (read_file(path, buf, sizeof(buf)) <= 0)
		return false;
	p = strrchr(buf, ')');
	return !(p && p[1] == ' ' && p[2] == 'Z');
}

static int do_release(const struct options *o)
{
	char buf[64];
	double deadline = now_s() + o->timeout_s;
	long pid;
	char *end;

	if (access(o->pidfile, F_OK) && errno == ENOENT) { /* the holder is gone already */
		printf("{\"released\":true,\"pid\":null,\"was_running\":false}\n");
		return 0;
	}
	if (read_file(o->pidfile, buf, sizeof(buf)) <= 0) {
		fprintf(stderr, "fragment: error: cannot read pid file %s: %s\n", o->pidfile,
			strerror(errno ? errno : ENOENT));
		return EXIT_USAGE;
	}
	pid = strtol(buf, &end, 10);
	if (pid <= 1 || (*end && *end != '\n')) {
		fprintf(stderr, "fragment: error: pid file %s does not hold a pid\n", o->pidfile);
		return EXIT_USAGE;
	}
	if (kill((pid_t)pid, SIGTERM) && errno == ESRCH) {
		unlink(o->pidfile);
		printf("{\"released\":true,\"pid\":%ld,\"was_running\":false}\n", pid);
		return 0;
	}
	while (now_s() < deadline) {
		if (access(o->pidfile, F_OK) != 0 || !process_alive((pid_t)pid)) {
			printf("{\"released\":true,\"pid\":%ld,\"was_running\":true}\n", pid);
			return 0;
		}
		usleep(50000);
	}
	fprintf(stderr, "fragment: error: pid %ld did not release within %.0f s\n", pid,
		o->timeout_s);
	return EXIT_ERROR;
}

/* ------------------------------------------------------------------ main */

static void wait_for_release(bool watch_stdin)
{
	sigset_t stops, old;

	/* checked and waited for with the signals blocked: none is lost in between */
	sigemptyset(&stops);
	sigaddset(&stops, SIGTERM);
	sigaddset(&stops, SIGINT);
	sigaddset(&stops, SIGUSR1);
	sigaddset(&stops, SIGHUP);
	sigprocmask(SIG_BLOCK, &stops, &old);
	while (!stop_requested) {
		struct pollfd p = { .fd = 0, .events = POLLIN };
		struct timespec second = { 1, 0 };
		char c;

		if (!watch_stdin) {
			sigsuspend(&old);
			continue;
		}
		if (ppoll(&p, 1, &second, &old) > 0 && (read(0, &c, 1) <= 0 || c == '\n'))
			break;
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
}

int main(int argc, char **argv)
{
	static struct options o;
	static struct state s;
	static struct result res;
	struct sigaction sa;
	struct buddy b;
	char err[512] = "";
	char *text;
	int pipefd[2] = { -1, -1 };
	int rc;

	parse_options(argc, argv, &o);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	/* a holder whose SSH channel went away keeps holding until it is released */
	signal(SIGPIPE, SIG_IGN);
	if (o.release)
		return do_release(&o);
	if (o.cleanup)
		return do_cleanup(&o);
	validate_against_system(&o, &b);

	s.o = &o;
	s.msg.keep_q = s.msg.drop_q = -1;
	s.rng = o.seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
	if (!s.rng)
		s.rng = 1;

	if (o.hold) {
		pid_t child;

		if (pipe(pipefd)) {
			perror("fragment: pipe");
			return EXIT_ERROR;
		}
		fflush(NULL);
		child = fork();
		if (child < 0) {
			perror("fragment: fork");
			return EXIT_ERROR;
		}
		if (child > 0) {
			/* parent: relay the child's summary, then leave it holding */
			char chunk[4096];
			FILE *in;
			int code = EXIT_ERROR;
			bool first = true;

			close(pipefd[1]);
			in = fdopen(pipefd[0], "r");
			while (in && fgets(chunk, sizeof(chunk), in)) {
				if (first) {
					code = atoi(chunk);
					first = false;
					continue;
				}
				fputs(chunk, stdout);
			}
			if (first) {
				fprintf(stderr, "fragment: error: the holding process died before "
					"reporting\n");
				return EXIT_ERROR;
			}
			return code;
		}
		close(pipefd[0]);
		setsid();
		{
			int fd = open("/dev/null", O_RDWR);

			if (fd >= 0) {
				dup2(fd, 0);
				if (fd > 0)
					close(fd);
			}
		}
	}
	res.pid = getpid();
	if (o.pidfile) {
		char pidtext[32];

		snprintf(pidtext, sizeof(pidtext), "%ld\n", (long)res.pid);
		if (write_atomic(o.pidfile, pidtext)) {
			fprintf(stderr, "fragment: error: cannot write pid file %s: %s\n", o.pidfile,
				strerror(errno));
			return EXIT_ERROR;
		}
	}

	if (fragment(&s, &res, err, sizeof(err))) {
		release_all(&s);
		if (o.pidfile)
			unlink(o.pidfile);
		fprintf(stderr, "fragment: error: %s\n", err);
		if (pipefd[1] >= 0) {
			dprintf(pipefd[1], "%d\n", EXIT_ERROR);
			close(pipefd[1]);
		}
		return EXIT_ERROR;
	}
	rc = res.reached ? EXIT_REACHED : EXIT_MISSED;
	text = summary_json(&s, &res, NULL, 0);
	if (!text) {
		fprintf(stderr, "fragment: error: out of memory for the summary\n");
		release_all(&s);
		return EXIT_ERROR;
	}
	if (o.summary && write_atomic(o.summary, text))
		fprintf(stderr, "fragment: warning: cannot write %s: %s\n", o.summary,
			strerror(errno));
	if (pipefd[1] >= 0) {
		int fd = open("/dev/null", O_RDWR);

		dprintf(pipefd[1], "%d\n%s", rc, text);
		close(pipefd[1]);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			if (fd > 2)
				close(fd);
		}
	} else {
		fputs(text, stdout);
		fflush(stdout);
	}
	free(text);

	wait_for_release(!o.hold);
	if (o.fault) { /* release-hang: a holder that never lets go (SIGKILL ends it) */
		sigset_t all;

		sigfillset(&all);
		sigprocmask(SIG_BLOCK, &all, NULL);
		for (;;)
			pause();
	}

	{
		double t0 = now_s();
		struct buddy after;

		release_all(&s);
		read_buddy(&after);
		text = summary_json(&s, &res, &after, now_s() - t0);
		if (text && o.summary)
			write_atomic(o.summary, text);
		free(text);
	}
	if (o.pidfile)
		unlink(o.pidfile);
	return rc;
}
