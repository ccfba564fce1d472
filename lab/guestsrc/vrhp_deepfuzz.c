/* Deep seeded fuzzer for /dev/vrhp: mostly well-formed requests, so that the ioctl bodies
 * run, over hostile memory and hostile timing.
 *  - real hugetlbfs segments of hostile geometry: starts in the middle of a huge page,
 *    both tables in one huge page, the same file mapped twice, 1 GiB and 2 MiB pages
 *    mixed, one page mapped at adjacent addresses, MAP_PRIVATE, a hole in the range,
 *    a mapping moved by mremap, a page size, path, offset or length that lies; files
 *    truncated, punched (FALLOC_FL_PUNCH_HOLE) and unlinked by other threads during and
 *    after HP_CONFIG;
 *  - well-formed requests over hostile table memory: through a writable mapping of the
 *    live table's hugetlbfs file, cyclic and merged overflow chains, `next` values at and
 *    past the bounds, garbage flags and header fields, while other threads run
 *    ADD/DEL/GET/STATS/FILL/PATTERN (on btable, PATTERN's garbage instead);
 *  - races inside one process: HP_CONFIG against mmap/munmap of /dev/vrhp_flow|bridge,
 *    RESET against split, forked and mremap'd mappings of them, a large FILL against a
 *    pending HP_CONFIG, SIGALRM during pinning, SIGKILL of a forked child inside a call,
 *    with fault_cfg_delay_ms holding HP_CONFIG's window open where a window helps.
 * A fraction of the calls is malformed (bad keys, tables, sizes, pointers, commands).
 *
 * Usage: vrhp_deepfuzz SEED CALLS THREADS MOUNT_DIR [--backend hugepage|btable]
 *                      [--state FILE] [--trace]
 * MOUNT_DIR is a 1 GiB hugetlbfs mount; a 2 MiB one is found in /proc/mounts. CALLS
 * operations are shared among THREADS threads; operation n of thread t, its kind and its
 * arguments, is a function of (SEED, t, n) alone, so a run replays with the same
 * arguments (what each call returns depends on how the threads interleave). --trace
 * prints "thread n operation" lines on stderr. With --state FILE, a run on a module that
 * has no tables first offers the segments FILE names without RESET (adoption), and every
 * run ends with clean filled tables on fresh files and writes their segments to FILE.
 * Prints one JSON object: calls, ioctls, ok, per-ioctl errno histogram, HP_CONFIG
 * outcomes, the module's reach counters before and after, elapsed seconds, and what was
 * skipped. Exit 0 when the run completed, 2 when it could not start. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vrhp_uapi.h"  /* -I kmod/include */

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

#define KB4		4096ull
#define M2_FILES	4		/* 2 MiB-page files dfz-m0..3 */
#define NREG		4		/* hugetlbfs mappings each thread keeps */
#define FLOW_KEYS	6000u
#define BRIDGE_KEYS	3000u
#define NERR		135		/* errno histogram buckets; the last one: larger */
#define MAX_NOTES	8
#define MAX_THREADS	64
#define REACH_ROWS	32
#define PARAMS		"/sys/module/vrhp/parameters/"

/* ---------------------------------------------------------------- tables of names */

enum { I_INFO, I_HP_CONFIG, I_FLOW_ADD, I_FLOW_DEL, I_FLOW_GET, I_BRIDGE_ADD, I_BRIDGE_DEL,
       I_BRIDGE_GET, I_FILL, I_STATS, I_PATTERN, I_OTHER, NIOC };

static const struct {
	unsigned long cmd;
	const char *name;
} IOC[NIOC] = {
	{ VRHP_IOC_INFO, "INFO" }, { VRHP_IOC_HP_CONFIG, "HP_CONFIG" },
	{ VRHP_IOC_FLOW_ADD, "FLOW_ADD" }, { VRHP_IOC_FLOW_DEL, "FLOW_DEL" },
	{ VRHP_IOC_FLOW_GET, "FLOW_GET" }, { VRHP_IOC_BRIDGE_ADD, "BRIDGE_ADD" },
	{ VRHP_IOC_BRIDGE_DEL, "BRIDGE_DEL" }, { VRHP_IOC_BRIDGE_GET, "BRIDGE_GET" },
	{ VRHP_IOC_FILL, "FILL" }, { VRHP_IOC_STATS, "STATS" }, { VRHP_IOC_PATTERN, "PATTERN" },
	{ 0, "OTHER" },
};

static const char *const OUTCOME[] = {
	"SUCCESS", "MEM_FAILURE", "INVALID_ARG_FALLBACK_IN_USE",
	"HUGEPAGE_FAILURE_FALLBACK_IN_USE", "ALREADY_INITIALISED", "PARTIAL",
	"LAYOUT_MISMATCH", "REFUSED", "OTHER",
};
#define NOUT (sizeof(OUTCOME) / sizeof(OUTCOME[0]))

enum { OP_FLOW_ADD, OP_FLOW_DEL, OP_FLOW_GET, OP_BRIDGE_ADD, OP_BRIDGE_DEL, OP_BRIDGE_GET,
       OP_FILL, OP_STATS, OP_INFO, OP_PATTERN, OP_MALFORMED, OP_CONFIG, OP_HOSTILE,
       OP_DEVMAP, OP_FILE, OP_EPISODE, NOPS };

static const char *const OPNAME[NOPS] = {
	"flow_add", "flow_del", "flow_get", "bridge_add", "bridge_del", "bridge_get", "fill",
	"stats", "info", "pattern", "malformed", "config", "hostile_memory", "device_map",
	"file", "episode",
};

/* Weights per 1000 operations. */
static const unsigned W_HUGEPAGE[NOPS] = {
	140, 80, 120, 100, 60, 90, 50, 40, 25, 12, 90, 35, 60, 40, 15, 10,
};
static const unsigned W_BTABLE[NOPS] = {
	150, 90, 130, 110, 70, 100, 60, 45, 25, 25, 95, 5, 0, 85, 0, 10,
};

/* ---------------------------------------------------------------- state */

struct stats {
	uint64_t ioctls, ok;
	uint64_t err[NIOC][NERR];
	uint64_t outcome[NOUT];
	uint64_t ops[NOPS];
	double op_s[NOPS];	/* seconds spent in each kind of operation */
	uint64_t sigbus, signals, forks, killed, skipped, violations;
};

struct hfile {
	char path[VRHP_PATH_MAX];
	uint64_t ps;
	uint64_t pages;
	int ok;			/* usable: its mount and pool exist */
};

struct region {			/* a mapping of hugetlbfs pages */
	char *addr;
	uint64_t len;
	int file;
	uint64_t foff;
};

struct devmap {			/* a mapping of /dev/vrhp_flow or _bridge */
	char *addr;
	uint64_t len;		/* of the range to munmap in the end */
	int split;		/* a page in the middle was unmapped */
	int hdr;		/* the table header is at addr (mapped from offset 0) */
	uint64_t id;		/* in live_ids */
};

struct view {			/* the live table's file, mapped writable */
	char *map;
	uint64_t maplen;
	char *table;		/* the table header inside map */
	char path[VRHP_PATH_MAX];
	uint64_t offset, instance;
};

struct worker {
	int id;
	uint64_t n;
	unsigned long calls;
	struct region reg[NREG];
	int next_reg;
	struct devmap dm[VRHP_NR_TABLES];
	struct view view[VRHP_NR_TABLES];
	int destroy_1g;		/* destructive file operations left on the 1 GiB file */
	timer_t timer;
	int have_timer;
	sigjmp_buf jb;
	volatile sig_atomic_t armed;
	volatile sig_atomic_t signals;
	struct stats st;
	unsigned char buf[4096] __attribute__((aligned(64)));
};

static struct {
	uint64_t entries, oentries, esz, file_bytes;
} tab[VRHP_NR_TABLES];

enum { F_G0 = 0, F_M0 = 1, NFILES = 1 + M2_FILES };

static int ctl = -1;
static int hugepage;
static uint64_t seed;
static int trace;
static struct hfile files[NFILES + 2];	/* + the two final files */
static int have1g, have2m;
static char mount1g[64], mount2m[64];
static unsigned char *guard_page;	/* a RW page followed by a PROT_NONE one */
static unsigned char *ro_page;
static unsigned char *anon;		/* 4 MiB of plain anonymous memory */
/*
 * The table device mappings of this process that no munmap has started on: a RESET that
 * rebuilds the tables while one of them existed from before the call to after it is a
 * violation (the module must refuse it, EBUSY).
 */
#define MAX_LIVE	(2 * MAX_THREADS + 8)
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t live_ids[MAX_LIVE], live_next = 1;
static int nlive;
static pthread_mutex_t note_lock = PTHREAD_MUTEX_INITIALIZER;
static char notes[MAX_NOTES][240];
static int nnotes;
static char skipped[4][240];
static int nskipped;
static __thread struct worker *self;

/* ---------------------------------------------------------------- small helpers */

struct rng {
	uint64_t s;
};

static uint64_t mix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rnd(struct rng *r)
{
	r->s += 0x9e3779b97f4a7c15ull;
	return mix(r->s);
}

static uint64_t below(struct rng *r, uint64_t n)
{
	return n ? rnd(r) % n : 0;
}

static int chance(struct rng *r, unsigned pct)
{
	return below(r, 100) < pct;
}

/* Operation n of thread t draws only from this: its kind and arguments replay. */
static struct rng op_rng(int t, uint64_t n)
{
	struct rng r = { mix(seed ^ mix(((uint64_t)t << 40) ^ n)) };

	return r;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t round_up(uint64_t v, uint64_t to)
{
	return (v + to - 1) / to * to;
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&note_lock);
	if (nnotes < MAX_NOTES) {
		va_start(ap, fmt);
		vsnprintf(notes[nnotes++], sizeof(notes[0]), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&note_lock);
}

static void violation(struct worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violation(struct worker *w, const char *fmt, ...)
{
	char what[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	w->st.violations++;
	note("thread %d op %" PRIu64 ": %s", w->id, w->n, what);
}

static void skip_note(const char *what)
{
	if (nskipped < 4)
		snprintf(skipped[nskipped++], sizeof(skipped[0]), "%s", what);
}

static void die(const char *what)
{
	printf("{\"error\": \"%s: %s\"}\n", what, strerror(errno));
	exit(2);
}

/* waitpid, again when a signal cut it short; 1 when `pid` was reaped. */
static int reap(pid_t pid, int *status)
{
	pid_t got;

	do
		got = waitpid(pid, status, 0);
	while (got < 0 && errno == EINTR);
	return got == pid;
}

static int ioc_index(unsigned long cmd)
{
	for (int i = 0; i < I_OTHER; i++)
		if (IOC[i].cmd == cmd)
			return i;
	return I_OTHER;
}

/* ioctl, counted; returns 0 or the errno. */
static int xioctl(struct worker *w, unsigned long cmd, void *arg)
{
	int ret = ioctl(ctl, cmd, arg);
	int e = ret ? errno : 0;

	w->st.ioctls++;
	if (!ret)
		w->st.ok++;
	w->st.err[ioc_index(cmd)][e < NERR ? e : NERR - 1]++;
	return e;
}

static void set_delay(unsigned ms)
{
	char b[16];
	int fd = open(PARAMS "fault_cfg_delay_ms", O_WRONLY);
	int n = snprintf(b, sizeof(b), "%u", ms);

	if (fd < 0)
		return;
	(void)!write(fd, b, (size_t)n);
	close(fd);
}

static void on_sigbus(int sig)
{
	struct worker *w = self;

	if (w && w->armed) {
		w->armed = 0;
		siglongjmp(w->jb, 1);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static void on_alarm(int sig)
{
	(void)sig;
	if (self)
		self->signals++;
}

/* A one-shot SIGALRM to this thread after `us` microseconds (0: disarm). */
static void alarm_in(struct worker *w, uint64_t us)
{
	struct itimerspec its = { .it_value = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 } };

	if (!w->have_timer) {
		struct sigevent sev;

		memset(&sev, 0, sizeof(sev));
		sev.sigev_notify = SIGEV_THREAD_ID;
		sev.sigev_signo = SIGALRM;
		sev.sigev_notify_thread_id = gettid();
		if (timer_create(CLOCK_MONOTONIC, &sev, &w->timer))
			return;
		w->have_timer = 1;
	}
	if (!us)
		its.it_value.tv_nsec = 0;
	else if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
		its.it_value.tv_nsec = 1;
	timer_settime(w->timer, 0, &its, NULL);
}

static void get_info(struct worker *w, struct vrhp_info *inf)
{
	memset(inf, 0, sizeof(*inf));
	if (xioctl(w, VRHP_IOC_INFO, inf))
		die("INFO");
}

static const struct vrhp_seg_info *seg_of(const struct vrhp_info *inf, uint32_t table)
{
	for (uint32_t i = 0; i < inf->nr_segs && i < VRHP_MAX_SEGS; i++)
		if (inf->segs[i].table == table)
			return &inf->segs[i];
	return NULL;
}

/* ---------------------------------------------------------------- keys and table ops */

static void flow_key(struct vrhp_flow_key *k, uint32_t i)
{
	memset(k, 0, sizeof(*k));
	k->vrf = i % 4;
	k->proto = (i & 1) ? 17 : 6;
	k->sport = (uint16_t)(i * 7 + 1024);
	k->dport = (uint16_t)(80 + i % 3);
	if (i % 5 == 0) {
		k->family = VRHP_AF_INET6;
		k->src[0] = 0xfd;
		memcpy(k->src + 8, &i, 4);
		k->dst[0] = 0xfd;
		k->dst[15] = 1;
	} else {
		k->family = VRHP_AF_INET;
		k->src[0] = 10;
		k->src[1] = (uint8_t)(i >> 16);
		k->src[2] = (uint8_t)(i >> 8);
		k->src[3] = (uint8_t)i;
		k->dst[0] = 192;
		k->dst[1] = 168;
		k->dst[3] = 1;
	}
}

static void bridge_key(struct vrhp_bridge_key *k, uint32_t i)
{
	memset(k, 0, sizeof(*k));
	k->vrf = i % 8;
	k->mac[0] = 0x02;
	k->mac[2] = (uint8_t)(i >> 24);
	k->mac[3] = (uint8_t)(i >> 16);
	k->mac[4] = (uint8_t)(i >> 8);
	k->mac[5] = (uint8_t)i;
}

static void op_flow(struct worker *w, struct rng *r, unsigned long cmd)
{
	struct vrhp_flow_req q;

	memset(&q, 0, sizeof(q));
	flow_key(&q.key, (uint32_t)below(r, FLOW_KEYS));
	q.action = (uint32_t)rnd(r);
	xioctl(w, cmd, &q);
}

static void op_bridge(struct worker *w, struct rng *r, unsigned long cmd)
{
	struct vrhp_bridge_req q;

	memset(&q, 0, sizeof(q));
	bridge_key(&q.key, (uint32_t)below(r, BRIDGE_KEYS));
	q.nexthop = (uint32_t)rnd(r);
	q.label = (uint32_t)rnd(r) & 0xfffff;
	xioctl(w, cmd, &q);
}

static int do_fill(struct worker *w, uint32_t table, uint64_t count, uint64_t fseed,
		   struct vrhp_fill *out)
{
	struct vrhp_fill f;

	memset(&f, 0, sizeof(f));
	f.table = table;
	f.count = count;
	f.seed = fseed;
	int e = xioctl(w, VRHP_IOC_FILL, &f);
	if (out)
		*out = f;
	return e;
}

static void op_fill(struct worker *w, struct rng *r)
{
	uint32_t t = (uint32_t)below(r, VRHP_NR_TABLES);
	uint64_t count = chance(r, 5) ? 1 + below(r, 1024) : 1 + below(r, 64);

	do_fill(w, t, count, 1 + below(r, 16), NULL);
}

static void op_stats(struct worker *w, struct rng *r)
{
	struct vrhp_stats st;

	memset(&st, 0, sizeof(st));
	st.table = (uint32_t)below(r, VRHP_NR_TABLES);
	xioctl(w, VRHP_IOC_STATS, &st);
}

static void op_pattern(struct worker *w, struct rng *r)
{
	struct vrhp_pattern p;

	memset(&p, 0, sizeof(p));
	p.table = (uint32_t)below(r, VRHP_NR_TABLES);
	p.seed = chance(r, 60) ? 0 : rnd(r) | 1;
	xioctl(w, VRHP_IOC_PATTERN, &p);
}

static void op_info(struct worker *w)
{
	struct vrhp_info inf;

	xioctl(w, VRHP_IOC_INFO, &inf);
}

static const unsigned long FLOW_CMDS[] = {
	VRHP_IOC_FLOW_ADD, VRHP_IOC_FLOW_DEL, VRHP_IOC_FLOW_GET,
};
static const unsigned long BRIDGE_CMDS[] = {
	VRHP_IOC_BRIDGE_ADD, VRHP_IOC_BRIDGE_DEL, VRHP_IOC_BRIDGE_GET,
};

/* One well-formed call on `table`: the follow-up of a write into its memory. */
static void table_op(struct worker *w, struct rng *r, uint32_t table)
{
	struct vrhp_stats st;

	switch (below(r, 5)) {
	case 0:
		memset(&st, 0, sizeof(st));
		st.table = table;
		xioctl(w, VRHP_IOC_STATS, &st);
		break;
	case 1:
		do_fill(w, table, 1 + below(r, 32), 1 + below(r, 16), NULL);
		break;
	default:
		if (table == VRHP_TABLE_FLOW)
			op_flow(w, r, FLOW_CMDS[below(r, 3)]);
		else
			op_bridge(w, r, BRIDGE_CMDS[below(r, 3)]);
	}
}

/* ---------------------------------------------------------------- malformed calls */

static const unsigned long REAL[] = {
	VRHP_IOC_INFO, VRHP_IOC_HP_CONFIG, VRHP_IOC_FLOW_ADD, VRHP_IOC_FLOW_DEL,
	VRHP_IOC_FLOW_GET, VRHP_IOC_BRIDGE_ADD, VRHP_IOC_BRIDGE_DEL, VRHP_IOC_BRIDGE_GET,
	VRHP_IOC_FILL, VRHP_IOC_STATS, VRHP_IOC_PATTERN,
};
#define NREAL (sizeof(REAL) / sizeof(REAL[0]))

static void op_malformed(struct worker *w, struct rng *r)
{
	struct vrhp_flow_req fq;
	struct vrhp_bridge_req bq;
	struct vrhp_fill f;
	struct vrhp_stats st;
	struct vrhp_pattern p;
	static __thread struct vrhp_hp_config c;
	unsigned long cmd = REAL[below(r, NREAL)];

	memset(&fq, 0, sizeof(fq));
	flow_key(&fq.key, (uint32_t)below(r, FLOW_KEYS));
	memset(&bq, 0, sizeof(bq));
	bridge_key(&bq.key, (uint32_t)below(r, BRIDGE_KEYS));
	switch (below(r, 12)) {
	case 0:		/* unknown family */
		fq.key.family = (uint8_t)(chance(r, 50) ? 0 : 5 + below(r, 250));
		xioctl(w, FLOW_CMDS[below(r, 3)], &fq);
		break;
	case 1:		/* IPv4 with bytes past the address */
		fq.key.family = VRHP_AF_INET;
		fq.key.src[4 + below(r, 12)] = (uint8_t)(1 + below(r, 255));
		xioctl(w, FLOW_CMDS[below(r, 3)], &fq);
		break;
	case 2:
		fq.key.pad[below(r, 2)] = (uint8_t)(1 + below(r, 255));
		xioctl(w, FLOW_CMDS[below(r, 3)], &fq);
		break;
	case 3:
		bq.key.pad[below(r, 2)] = (uint8_t)(1 + below(r, 255));
		xioctl(w, BRIDGE_CMDS[below(r, 3)], &bq);
		break;
	case 4:		/* no such table, or more than twice its entries */
		memset(&f, 0, sizeof(f));
		f.table = (uint32_t)(chance(r, 50) ? 2 + below(r, 1u << 31) : below(r, 2));
		f.count = f.table < 2 ? 2 * (tab[f.table].entries + tab[f.table].oentries) + 1 +
			  below(r, 1ull << 40) : 1 + below(r, 64);
		xioctl(w, VRHP_IOC_FILL, &f);
		break;
	case 5:
		memset(&st, 0, sizeof(st));
		memset(&p, 0, sizeof(p));
		st.table = p.table = (uint32_t)(2 + below(r, 1000));
		if (chance(r, 50)) {
			xioctl(w, VRHP_IOC_STATS, &st);
		} else {
			if (chance(r, 50)) {
				p.table = (uint32_t)below(r, 2);
				p.pad = (uint32_t)(1 + below(r, 1000));
			}
			xioctl(w, VRHP_IOC_PATTERN, &p);
		}
		break;
	case 6:
		xioctl(w, cmd, NULL);
		break;
	case 7:		/* the argument runs into a PROT_NONE page */
		memset(guard_page, 0, 4096);
		xioctl(w, cmd, guard_page + 4096 - 8 * (1 + below(r, 8)));
		break;
	case 8:
		xioctl(w, cmd, (void *)(uintptr_t)(0xffff888000000000ull + below(r, 4096) * 64));
		break;
	case 9:		/* readable, not writable: the body runs, the answer cannot be copied */
		xioctl(w, chance(r, 50) ? VRHP_IOC_STATS : cmd, ro_page);
		break;
	case 10:	/* a real number with another size or direction, or any number */
		for (size_t i = 0; i < sizeof(w->buf); i += 8) {
			uint64_t v = rnd(r);

			memcpy(w->buf + i, &v, 8);
		}
		if (chance(r, 70))
			cmd = _IOC(below(r, 4), VRHP_IOC_MAGIC, below(r, 0x40), below(r, 0x1000));
		else
			cmd = (unsigned long)rnd(r);
		xioctl(w, cmd, w->buf);
		break;
	default:	/* HP_CONFIG refused before anything is pinned */
		memset(&c, 0, sizeof(c));
		c.nr_segs = 1 + (uint32_t)below(r, 2);
		c.segs[0].uaddr = c.segs[1].uaddr = (uintptr_t)anon;
		c.segs[0].len = c.segs[1].len = 4 * KB4;
		c.segs[0].page_size = c.segs[1].page_size = VRHP_PAGE_2M;
		c.segs[1].table = 1;
		switch (below(r, 6)) {
		case 0: c.nr_segs = 5 + (uint32_t)below(r, 100); break;
		case 1: c.flags = 2u << below(r, 30); break;
		case 2: c.segs[0].table = 2 + (uint32_t)below(r, 100); break;
		case 3: c.nr_segs = 2; c.segs[1].table = 0; break;		/* duplicate */
		case 4: memset(c.segs[0].path, 'x', sizeof(c.segs[0].path)); break;
		default: c.nr_segs = 2; break;			/* overlapping ranges */
		}
		xioctl(w, VRHP_IOC_HP_CONFIG, &c);
	}
}

/* ---------------------------------------------------------------- hugetlbfs geometry */

static uint64_t pages_for(uint64_t bytes, uint64_t ps)
{
	return round_up(bytes, ps) / ps;
}

static void unmap_region(struct region *g)
{
	if (g->addr)
		munmap(g->addr, g->len);
	g->addr = NULL;
}

/* Take the oldest of the thread's region slots (its mapping is removed). */
static struct region *slot(struct worker *w)
{
	struct region *g = &w->reg[w->next_reg];

	w->next_reg = (w->next_reg + 1) % NREG;
	unmap_region(g);
	return g;
}

/* `npages` huge pages of file f from page `first`, mapped with `flags`; NULL on failure. */
static struct region *map_region(struct worker *w, int f, uint64_t first, uint64_t npages,
				 int flags)
{
	const struct hfile *h = &files[f];
	struct region *g;
	int fd;
	void *p;

	if (!h->ok || first + npages > h->pages)
		return NULL;
	fd = open(h->path, O_RDWR | O_CREAT, 0600);
	if (fd < 0)
		return NULL;
	p = mmap(NULL, npages * h->ps, PROT_READ | PROT_WRITE, flags, fd, (off_t)(first * h->ps));
	close(fd);
	if (p == MAP_FAILED)
		return NULL;
	g = slot(w);
	g->addr = p;
	g->len = npages * h->ps;
	g->file = f;
	g->foff = first * h->ps;
	return g;
}

/*
 * A hole in one of our mappings: an inaccessible placeholder, never a plain munmap. The
 * address range stays ours, so another thread's mmap cannot land in it and be unmapped
 * with the rest of the mapping later.
 */
static void punch_hole(void *addr, size_t len)
{
	mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
}

/* An aligned range of `len` bytes reserved PROT_NONE, for MAP_FIXED and mremap targets. */
static char *reserve(uint64_t len, uint64_t align)
{
	char *p = mmap(NULL, len + align, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *a;

	if (p == MAP_FAILED)
		return NULL;
	a = (char *)round_up((uintptr_t)p, align);
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + len < p + len + align)
		munmap(a + len, (size_t)(p + len + align - (a + len)));
	return a;
}

/* One page of file f at `npages` adjacent addresses: a range that aliases itself. */
/*
 * `npages` huge pages of file f, mapped one by one into a reservation: page i is the
 * file's page `first` (alias) or `first + i`, and page `hole` (if any) is left out. Built
 * page by page, no huge-page mapping is ever split (a split of a hugetlb VMA trips a
 * lockdep assertion in Debian's 6.1 kernels themselves).
 */
static struct region *map_pagewise(struct worker *w, int f, uint64_t first, uint64_t npages,
				   int alias, uint64_t hole)
{
	const struct hfile *h = &files[f];
	char *base = reserve(npages * h->ps, h->ps);
	struct region *g;
	int fd;

	if (!base)
		return NULL;
	fd = open(h->path, O_RDWR | O_CREAT, 0600);
	for (uint64_t i = 0; fd >= 0 && i < npages; i++)
		if (i != hole && mmap(base + i * h->ps, h->ps, PROT_READ | PROT_WRITE,
				      MAP_SHARED | MAP_FIXED, fd,
				      (off_t)((first + (alias ? 0 : i)) * h->ps)) == MAP_FAILED)
			break;
	if (fd >= 0)
		close(fd);
	g = slot(w);
	g->addr = base;
	g->len = npages * h->ps;
	g->file = f;
	g->foff = first * h->ps;
	return g;
}

/* One page at `npages` adjacent addresses. */
static struct region *map_alias(struct worker *w, int f, uint64_t page, uint64_t npages)
{
	return map_pagewise(w, f, page, npages, 1, UINT64_MAX);
}

/* Pages first .. first + npages - 1 at adjacent addresses, the second one left out. */
static struct region *map_holed(struct worker *w, int f, uint64_t first, uint64_t npages)
{
	if (!files[f].ok || npages < 2 || first + npages > files[f].pages)
		return NULL;
	return map_pagewise(w, f, first, npages, 0, 1);
}

static int pick_2m(struct rng *r)
{
	return F_M0 + (int)below(r, M2_FILES);
}

static void seg_at(struct vrhp_segment *s, const struct region *g, uint32_t table, uint64_t o,
		   uint64_t len)
{
	memset(s, 0, sizeof(*s));
	s->uaddr = (uintptr_t)g->addr + o;
	s->len = len;
	s->page_size = files[g->file].ps;
	s->table = table;
	s->offset = g->foff + o;
	snprintf(s->path, sizeof(s->path), "%s", files[g->file].path);
}

/*
 * A valid length for `table` on pages of `ps`, at most `room` (>= file_bytes): mostly the
 * table's bytes, at times up to 4 MiB more, rarely up to the end of its last huge page
 * (every 4 KiB page of a segment is pinned: a whole 1 GiB page costs a second under TCG).
 */
static uint64_t seg_len(struct rng *r, uint32_t table, uint64_t ps, uint64_t room)
{
	uint64_t min = tab[table].file_bytes, max = round_up(min, ps), pct = below(r, 100);

	if (max > room)
		max = room & ~(KB4 - 1);
	if (max <= min || pct < 75)
		return min;
	if (pct == 99)
		return max;
	if (max > min + (4u << 20))
		max = min + (4u << 20);
	return min + KB4 * below(r, (max - min) / KB4 + 1);
}

/* A region of file f (page size ps) holding `bytes` from a random page, plus `extra`. */
static struct region *region_for(struct worker *w, struct rng *r, int f, uint64_t bytes,
				 uint64_t extra, int flags)
{
	const struct hfile *h = &files[f];
	uint64_t n = pages_for(bytes, h->ps) + extra;

	if (!h->ok || n > h->pages)
		return NULL;
	return map_region(w, f, below(r, h->pages - n + 1), n, flags);
}

/* Put `table` somewhere in g, with a valid length; 0 if it does not fit. */
static int place(struct rng *r, struct vrhp_segment *s, const struct region *g, uint32_t table)
{
	uint64_t fb = tab[table].file_bytes, o, len;

	if (!g || g->len < fb)
		return 0;
	o = KB4 * below(r, (g->len - fb) / KB4 + 1);
	len = seg_len(r, table, files[g->file].ps, g->len - o);
	seg_at(s, g, table, o, len);
	return 1;
}

/* Both tables in g without sharing a 4 KiB page, in a random order; 0 if they do not fit. */
static int place_two(struct rng *r, struct vrhp_hp_config *c, const struct region *g)
{
	uint32_t first = (uint32_t)below(r, 2);
	uint64_t l1 = tab[first].file_bytes, l2 = tab[!first].file_bytes, slack, a, b;

	if (!g || g->len < l1 + l2)
		return 0;
	slack = (g->len - l1 - l2) / KB4;
	a = below(r, slack + 1);
	b = below(r, slack - a + 1);
	seg_at(&c->segs[0], g, first, a * KB4, l1);
	seg_at(&c->segs[1], g, !first, (a + b) * KB4 + l1, l2);
	c->nr_segs = 2;
	return 1;
}

/* Both tables in one file, each through its own mapping; `share`: their pages overlap. */
static int place_twice(struct worker *w, struct rng *r, struct vrhp_hp_config *c, int f,
		       int share)
{
	const struct hfile *h = &files[f];
	uint64_t size = h->pages * h->ps, l[2] = { tab[0].file_bytes, tab[1].file_bytes };
	uint64_t fo[2], slack;

	if (!h->ok || size < l[0] + l[1])
		return 0;
	slack = (size - l[0] - l[1]) / KB4;
	fo[0] = KB4 * below(r, slack + 1);
	fo[1] = fo[0] + l[0] + KB4 * below(r, slack - fo[0] / KB4 + 1);
	if (share)
		fo[1] = fo[0] + KB4 * below(r, l[0] / KB4);
	if (chance(r, 50)) {	/* bridge first */
		uint64_t t = fo[1] - fo[0];

		fo[1] = fo[0];
		fo[0] = fo[1] + (share ? t : l[1] + (t - l[0]));
		if (fo[0] + l[0] > size)
			fo[0] = size - l[0];
	}
	for (uint32_t t = 0; t < VRHP_NR_TABLES; t++) {
		uint64_t first = fo[t] / h->ps;
		uint64_t n = pages_for(fo[t] + l[t], h->ps) - first;
		struct region *g = map_region(w, f, first, n, MAP_SHARED);

		if (!g)
			return 0;
		seg_at(&c->segs[t], g, t, fo[t] - first * h->ps, l[t]);
	}
	c->nr_segs = 2;
	return 1;
}

enum { G_2M_SPLIT, G_2M_SAME, G_2M_TWICE, G_1G, G_1G_TWICE, G_MIXED, G_ONE, G_NONE, NGEO };
static const unsigned W_GEO[NGEO] = { 24, 14, 12, 14, 8, 12, 12, 4 };

enum { T_NONE, T_PRIVATE, T_ALIAS, T_HOLE, T_MREMAP, T_PS_LIE, T_PATH, T_OFFSET, T_MISALIGN,
       T_LEN, T_ANON, T_TRUNC, T_FLAGS, T_SHARE, NTWIST };

static uint64_t pick(struct rng *r, const unsigned *w, size_t n)
{
	uint64_t total = 0, x;

	for (size_t i = 0; i < n; i++)
		total += w[i];
	x = below(r, total);
	for (size_t i = 0; i < n; i++) {
		if (x < w[i])
			return i;
		x -= w[i];
	}
	return n - 1;
}

/* The flow table's region, bent by `twist`; places segs[0] there. */
static int hostile_flow(struct worker *w, struct rng *r, struct vrhp_hp_config *c, int twist)
{
	int f = pick_2m(r);
	uint64_t fb = tab[0].file_bytes, ps = VRHP_PAGE_2M, n = pages_for(fb, ps);
	struct region *g;
	char *to;

	switch (twist) {
	case T_PRIVATE:
		g = region_for(w, r, f, fb, below(r, 2), MAP_PRIVATE | MAP_NORESERVE);
		return place(r, &c->segs[0], g, 0);
	case T_ALIAS:		/* one page at n + 1 adjacent addresses */
		g = map_alias(w, f, below(r, files[f].pages), n + 1);
		return place(r, &c->segs[0], g, 0);
	case T_HOLE:		/* n + 2 pages with the second not mapped */
		n = pages_for(fb, ps) + 2;
		if (!files[f].ok || n > files[f].pages)
			return 0;
		g = map_holed(w, f, below(r, files[f].pages - n + 1), n);
		if (!g)
			return 0;
		seg_at(&c->segs[0], g, 0, KB4 * below(r, ps / KB4), fb);
		return 1;
	case T_MREMAP:		/* the mapping moved: address and offset still agree */
		g = region_for(w, r, f, fb, below(r, 2), MAP_SHARED);
		if (!g)
			return 0;
		to = reserve(g->len, ps);
		if (to) {
			void *p = mremap(g->addr, g->len, g->len, MREMAP_MAYMOVE | MREMAP_FIXED, to);

			if (p == MAP_FAILED)
				munmap(to, g->len);
			else
				g->addr = p;
		}
		return place(r, &c->segs[0], g, 0);
	default:
		g = region_for(w, r, f, fb, below(r, 2), MAP_SHARED);
		return place(r, &c->segs[0], g, 0);
	}
}

/* A twist that lies in a field of a segment built properly. */
static void bend(struct worker *w, struct rng *r, struct vrhp_segment *s, int twist)
{
	char other[VRHP_PATH_MAX];

	switch (twist) {
	case T_PS_LIE:
		s->page_size = s->page_size == VRHP_PAGE_1G ? VRHP_PAGE_2M : VRHP_PAGE_1G;
		break;
	case T_PATH:
		snprintf(other, sizeof(other), "%s", chance(r, 50) ? files[pick_2m(r)].path :
			 "/dev/hugepages/none");
		memcpy(s->path, other, sizeof(s->path));
		break;
	case T_OFFSET:
		s->offset += chance(r, 50) ? KB4 : s->page_size;
		break;
	case T_MISALIGN:
		if (chance(r, 50))
			s->uaddr += 1 + below(r, KB4 - 1);
		else
			s->len += 1 + below(r, KB4 - 1);
		break;
	case T_LEN:
		s->len = chance(r, 50) ? s->len - KB4 :
			 round_up(tab[s->table].file_bytes, s->page_size) + KB4 * (1 + below(r, 4));
		break;
	case T_ANON:
		s->uaddr = (uintptr_t)anon + KB4 * below(r, 16);
		break;
	case T_TRUNC:	/* the file ends inside the segment (2 MiB pages: cheap to refill) */
		if (s->page_size == VRHP_PAGE_2M && truncate(s->path, (off_t)(s->offset + KB4 * below(r, s->len / KB4))) == 0)
			w->st.ops[OP_FILE]++;
		break;
	case T_FLAGS:
		s->flags = 1u << below(r, 32);
		break;
	default:
		break;
	}
}

/*
 * A config of real segments: a geometry, and in three cases of ten one twist that makes
 * it hostile. Returns 0 when the geometry could not be built (no such pages).
 */
static int build_config(struct worker *w, struct rng *r, struct vrhp_hp_config *c,
			int geo, int twist)
{
	uint32_t t;
	int f;

	memset(c, 0, sizeof(*c));
	c->flags = chance(r, 85) ? VRHP_CFG_RESET : 0;
	if (geo < 0)
		geo = (int)pick(r, W_GEO, NGEO);
	if (!have2m && (geo == G_2M_SPLIT || geo == G_2M_SAME || geo == G_2M_TWICE))
		geo = geo == G_2M_TWICE ? G_1G_TWICE : G_1G;
	if (!have1g && (geo == G_1G || geo == G_1G_TWICE || geo == G_MIXED))
		geo = geo == G_1G_TWICE ? G_2M_TWICE : G_2M_SPLIT;
	if (!have1g && !have2m && geo != G_NONE)
		return 0;
	if (twist < 0)
		twist = chance(r, 30) ? (int)(1 + below(r, NTWIST - 1)) : T_NONE;
	if (!have2m && twist >= T_PRIVATE && twist <= T_MREMAP)
		twist = T_NONE;
	if (twist >= T_PRIVATE && twist <= T_MREMAP) {
		/* flow bent on 2 MiB pages, bridge proper on another file */
		if (!hostile_flow(w, r, c, twist))
			return 0;
		f = have1g && chance(r, 30) ? F_G0 : pick_2m(r);
		if (!place(r, &c->segs[1], region_for(w, r, f, tab[1].file_bytes, 0, MAP_SHARED), 1))
			return 0;
		c->nr_segs = 2;
		return 1;
	}
	switch (geo) {
	case G_2M_SPLIT:
		f = pick_2m(r);
		if (!place(r, &c->segs[0], region_for(w, r, f, tab[0].file_bytes, below(r, 2),
						       MAP_SHARED), 0))
			return 0;
		f = F_M0 + (f - F_M0 + 1 + (int)below(r, M2_FILES - 1)) % M2_FILES;
		if (!place(r, &c->segs[1], region_for(w, r, f, tab[1].file_bytes, below(r, 2),
						       MAP_SHARED), 1))
			return 0;
		c->nr_segs = 2;
		break;
	case G_2M_SAME:
		if (!place_two(r, c, region_for(w, r, pick_2m(r),
						tab[0].file_bytes + tab[1].file_bytes, below(r, 2),
						MAP_SHARED)))
			return 0;
		break;
	case G_2M_TWICE:
		if (!place_twice(w, r, c, pick_2m(r), twist == T_SHARE))
			return 0;
		break;
	case G_1G:
		if (!place_two(r, c, map_region(w, F_G0, 0, 1, MAP_SHARED)))
			return 0;
		break;
	case G_1G_TWICE:
		if (!place_twice(w, r, c, F_G0, twist == T_SHARE))
			return 0;
		break;
	case G_MIXED:
		t = (uint32_t)below(r, 2);
		if (!place(r, &c->segs[0], map_region(w, F_G0, 0, 1, MAP_SHARED), t))
			return 0;
		if (!place(r, &c->segs[1], region_for(w, r, pick_2m(r), tab[!t].file_bytes, 0,
						       MAP_SHARED), !t))
			return 0;
		c->nr_segs = 2;
		break;
	case G_ONE:	/* the other table falls back to btable (PARTIAL) */
		t = (uint32_t)below(r, 2);
		f = have1g && (!have2m || chance(r, 30)) ? F_G0 : pick_2m(r);
		if (!place(r, &c->segs[0], region_for(w, r, f, tab[t].file_bytes, 0, MAP_SHARED), t))
			return 0;
		c->nr_segs = 1;
		break;
	default:	/* nothing: both tables on btable */
		c->nr_segs = 0;
		c->flags = VRHP_CFG_RESET;
		return 1;
	}
	if (twist > T_MREMAP && twist != T_SHARE)
		bend(w, r, &c->segs[below(r, c->nr_segs)], twist);
	return 1;
}

static int rebuilt(uint32_t outcome)
{
	return outcome == VRHP_OUT_SUCCESS || outcome == VRHP_OUT_PARTIAL ||
	       outcome == VRHP_OUT_INVALID_ARG_FALLBACK_IN_USE ||
	       outcome == VRHP_OUT_HUGEPAGE_FAILURE_FALLBACK_IN_USE;
}

static void live_add(struct devmap *d)
{
	pthread_mutex_lock(&live_lock);
	d->id = live_next++;
	if (nlive < MAX_LIVE)
		live_ids[nlive++] = d->id;
	pthread_mutex_unlock(&live_lock);
}

/* Before munmap: from now on the mapping may be gone. */
static void live_del(const struct devmap *d)
{
	pthread_mutex_lock(&live_lock);
	for (int i = 0; i < nlive; i++)
		if (live_ids[i] == d->id) {
			live_ids[i] = live_ids[--nlive];
			break;
		}
	pthread_mutex_unlock(&live_lock);
}

/* How many of `ids` are still live mappings. */
static int live_still(const uint64_t *ids, int n)
{
	int still = 0;

	pthread_mutex_lock(&live_lock);
	for (int i = 0; i < n; i++)
		for (int j = 0; j < nlive; j++)
			still += live_ids[j] == ids[i];
	pthread_mutex_unlock(&live_lock);
	return still;
}

/* HP_CONFIG, with the check that no table this process mapped throughout was replaced. */
static int do_config(struct worker *w, struct vrhp_hp_config *c)
{
	uint64_t ids[MAX_LIVE];
	int n, e;

	pthread_mutex_lock(&live_lock);
	n = nlive;
	memcpy(ids, live_ids, (size_t)n * sizeof(ids[0]));
	pthread_mutex_unlock(&live_lock);
	e = xioctl(w, VRHP_IOC_HP_CONFIG, c);
	if (e)
		return e;
	w->st.outcome[c->outcome < NOUT - 1 ? c->outcome : NOUT - 1]++;
	if (hugepage && (c->flags & VRHP_CFG_RESET) && rebuilt(c->outcome) && n &&
	    live_still(ids, n))
		violation(w, "RESET rebuilt the tables (outcome %u) while a table device stayed mapped",
			  c->outcome);
	return 0;
}

static void op_config(struct worker *w, struct rng *r)
{
	static __thread struct vrhp_hp_config c;
	int timed = chance(r, 10);
	uint64_t us = below(r, 300);

	if (!hugepage) {	/* answered ALREADY_INITIALISED at once */
		memset(&c, 0, sizeof(c));
		c.flags = chance(r, 50) ? VRHP_CFG_RESET : 0;
		do_config(w, &c);
		return;
	}
	if (!build_config(w, r, &c, -1, -1)) {
		w->st.skipped++;
		return;
	}
	if (timed)
		alarm_in(w, 1 + us);
	do_config(w, &c);
	if (timed)
		alarm_in(w, 0);
}

/* ---------------------------------------------------------------- hostile table memory */

static void drop_view(struct view *v)
{
	if (v->map)
		munmap(v->map, v->maplen);
	memset(v, 0, sizeof(*v));
}

/* The live table's memory through a mapping of its file, or NULL. */
static char *live_table(struct worker *w, uint32_t t)
{
	struct vrhp_info inf;
	const struct vrhp_seg_info *s;
	struct view *v = &w->view[t];
	struct stat sb;
	uint64_t base;
	int fd;
	void *p;

	if (xioctl(w, VRHP_IOC_INFO, &inf))
		return NULL;
	s = seg_of(&inf, t);
	if (!s || inf.tables[t].backend != VRHP_BACKEND_HUGEPAGE || s->detached) {
		drop_view(v);
		return NULL;
	}
	if (v->map && v->offset == s->offset && v->instance == inf.tables[t].instance &&
	    !strncmp(v->path, s->path, sizeof(v->path)))
		return v->table;
	drop_view(v);
	fd = open(s->path, O_RDWR);
	if (fd < 0)
		return NULL;
	base = s->offset & ~(s->page_size - 1);
	v->maplen = round_up(s->offset - base + tab[t].file_bytes, s->page_size);
	/* a file cut shorter no longer holds the table: a mapping would only regrow it */
	if (fstat(fd, &sb) || (uint64_t)sb.st_size < base + v->maplen) {
		close(fd);
		return NULL;
	}
	p = mmap(NULL, v->maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base);
	close(fd);
	if (p == MAP_FAILED)
		return NULL;
	v->map = p;
	v->table = v->map + (s->offset - base);
	v->offset = s->offset;
	v->instance = inf.tables[t].instance;
	snprintf(v->path, sizeof(v->path), "%s", s->path);
	return v->table;
}

static uint32_t *eflags(char *tb, uint32_t t, uint64_t idx)
{
	return (uint32_t *)(tb + VRHP_HDR_SIZE + idx * tab[t].esz);
}

static uint32_t *enext(char *tb, uint32_t t, uint64_t idx)
{
	return eflags(tb, t, idx) + 1;
}

static uint64_t tail_of(struct rng *r, uint32_t t)
{
	return below(r, tab[t].entries / VRHP_BUCKET_SIZE) * VRHP_BUCKET_SIZE +
	       VRHP_BUCKET_SIZE - 1;
}

/* What one write into table memory does; in memory, so that it survives a siglongjmp. */
struct hostile {
	uint32_t t, nv, fv, rv;
	uint64_t kind, o1, o2, a, b, tail1, tail2, field, len, r1, r2;
};

static void hostile_write(char *tb, const struct hostile *p)
{
	struct vrhp_table_hdr *h = (struct vrhp_table_hdr *)tb;
	uint32_t t = p->t;
	uint64_t E = tab[t].entries, O = tab[t].oentries;

	switch (p->kind) {
	case 0:		/* a bucket's chain head at and past the bounds */
		*enext(tb, t, p->tail1) = p->nv;
		break;
	case 1:		/* an overflow entry that follows itself */
		*enext(tb, t, E + p->o1) = (uint32_t)p->o1 + 1;
		*eflags(tb, t, E + p->o1) = VRHP_EF_LINKED | VRHP_EF_VALID;
		*enext(tb, t, p->tail1) = (uint32_t)p->o1 + 1;
		break;
	case 2:		/* a cycle of two */
		*enext(tb, t, E + p->o1) = (uint32_t)p->o2 + 1;
		*enext(tb, t, E + p->o2) = (uint32_t)p->o1 + 1;
		*eflags(tb, t, E + p->o1) = p->fv;
		*enext(tb, t, p->tail1) = (uint32_t)p->o1 + 1;
		break;
	case 3:		/* two buckets' chains merged */
		*enext(tb, t, p->tail1) = (uint32_t)p->o1 + 1;
		*enext(tb, t, p->tail2) = (uint32_t)p->o1 + 1;
		*eflags(tb, t, E + p->o1) = VRHP_EF_LINKED | VRHP_EF_VALID;
		break;
	case 4:
		*eflags(tb, t, p->a) = p->fv;
		break;
	case 5:		/* a header field */
		switch (p->field) {
		case 0: h->hash_seed = p->rv; break;
		case 1: h->magic ^= 1ull << (p->rv & 63); break;
		case 2: h->entries += 1 + (p->rv & 7); break;
		case 3: h->oentries = p->rv; break;
		case 4: h->table_bytes = p->r1; break;
		case 5: h->generation = p->r2; break;
		default: h->layout_version = p->rv; break;
		}
		break;
	case 6:		/* a long proper chain of overflow entries */
		for (uint64_t i = 0, o = p->o1; i < p->len; i++, o = (o + 1) % O) {
			*eflags(tb, t, E + o) = VRHP_EF_LINKED | VRHP_EF_VALID;
			*enext(tb, t, E + o) = i + 1 < p->len ? (uint32_t)((o + 1) % O) + 1 : 0;
		}
		*enext(tb, t, p->tail1) = (uint32_t)p->o1 + 1;
		break;
	case 7:		/* one entry copied over another: a key twice */
		memcpy(eflags(tb, t, p->b), eflags(tb, t, p->a), tab[t].esz);
		break;
	case 8:		/* entries cleared: the agent aging them out */
		for (uint64_t i = 0; i < p->len * 2 && p->a + i < E + O; i++)
			memset(eflags(tb, t, p->a + i), 0, tab[t].esz);
		break;
	default:
		*enext(tb, t, E + p->o2) = p->nv;
	}
}

/* Write into the live table's memory what the agent could, then call the module on it. */
static void op_hostile(struct worker *w, struct rng *r)
{
	struct hostile p;
	uint64_t E, O;
	char *tb;

	memset(&p, 0, sizeof(p));
	p.t = (uint32_t)below(r, VRHP_NR_TABLES);
	E = tab[p.t].entries;
	O = tab[p.t].oentries;
	{
		uint32_t nexts[] = { 0, 1, (uint32_t)O, (uint32_t)O + 1, 0xffffffffu,
				     (uint32_t)rnd(r) };
		uint32_t flagv[] = { 0, VRHP_EF_VALID, VRHP_EF_LINKED,
				     VRHP_EF_VALID | VRHP_EF_LINKED, (uint32_t)rnd(r) };

		p.nv = nexts[below(r, 6)];
		p.fv = flagv[below(r, 5)];
	}
	p.rv = (uint32_t)rnd(r);
	p.kind = below(r, 10);
	p.o1 = below(r, O);
	p.o2 = below(r, O);
	p.a = below(r, E + O);
	p.b = below(r, E + O);
	p.tail1 = tail_of(r, p.t);
	p.tail2 = tail_of(r, p.t);
	p.field = below(r, 7);
	p.len = 2 + below(r, 7);
	p.r1 = rnd(r);
	p.r2 = rnd(r);
	tb = live_table(w, p.t);
	if (!tb) {
		w->st.skipped++;
		table_op(w, r, p.t);
		return;
	}
	if (sigsetjmp(w->jb, 1) == 0) {
		w->armed = 1;
		hostile_write(tb, &p);
		w->armed = 0;
	} else {	/* the file lost the page under the mapping */
		w->st.sigbus++;
		drop_view(&w->view[p.t]);
	}
	table_op(w, r, p.t);
}

/* ---------------------------------------------------------------- device mappings */

static const char *const DEV[VRHP_NR_TABLES] = { "/dev/vrhp_flow", "/dev/vrhp_bridge" };

static void dev_unmap(struct devmap *d)
{
	if (!d->addr)
		return;
	live_del(d);
	munmap(d->addr, d->len);
	memset(d, 0, sizeof(*d));
}

/* Read through a device mapping: its header must be the live table's. */
static void dev_read(struct worker *w, struct rng *r, uint32_t t)
{
	struct devmap *d = &w->dm[t];
	struct vrhp_info inf;
	volatile uint64_t magic = 0, instance = 0, sink;
	uint64_t at = below(r, d->len / 8) * 8;

	if (xioctl(w, VRHP_IOC_INFO, &inf))
		return;
	if (sigsetjmp(w->jb, 1) == 0) {
		w->armed = 1;
		magic = ((volatile struct vrhp_table_hdr *)d->addr)->magic;
		instance = ((volatile struct vrhp_table_hdr *)d->addr)->instance;
		if (!d->split || at < KB4)
			sink = *(volatile uint64_t *)(d->addr + at);
		w->armed = 0;
		(void)sink;
	} else {
		w->st.sigbus++;
		violation(w, "a read of the mapped %s table device faulted", t ? "bridge" : "flow");
		return;
	}
	if (d->hdr && (magic != VRHP_HDR_MAGIC || instance != inf.tables[t].instance))
		violation(w, "the mapped %s table device holds magic 0x%" PRIx64 " instance %" PRIu64
			  ", INFO says instance %" PRIu64, t ? "bridge" : "flow", (uint64_t)magic,
			  (uint64_t)instance, (uint64_t)inf.tables[t].instance);
}

static void op_devmap(struct worker *w, struct rng *r)
{
	uint32_t t = (uint32_t)below(r, VRHP_NR_TABLES);
	struct devmap *d = &w->dm[t];
	uint64_t full = round_up(tab[t].file_bytes, KB4);
	uint64_t sizes[] = { KB4, 4 * KB4, full, full, full + KB4 };
	uint64_t len = sizes[below(r, 5)], k = below(r, 1u << 20);
	int prot = chance(r, 90) ? PROT_READ : PROT_READ | PROT_WRITE;
	int flags = chance(r, 80) ? MAP_SHARED : MAP_PRIVATE;
	off_t off = chance(r, 90) ? 0 : (off_t)KB4;
	/* on huge pages a mapped (fallback) table refuses every RESET: mappings live shorter */
	uint64_t kind = below(r, hugepage ? 12 : 9);
	pid_t pid;
	int fd, status;
	void *p;

	if (!d->addr && kind < 8)
		kind = 0;
	switch (kind) {
	case 0:
	case 1:
		dev_unmap(d);
		fd = open(DEV[t], O_RDONLY);
		if (fd < 0)
			break;
		p = mmap(NULL, len, prot, flags, fd, off);
		close(fd);
		if (p != MAP_FAILED) {
			d->addr = p;
			d->len = len;
			d->hdr = off == 0;
			live_add(d);
			dev_read(w, r, t);
		}
		break;
	case 2:
		dev_read(w, r, t);
		break;
	case 3:		/* split: a page in the middle goes, the ends stay */
		if (d->len >= 3 * KB4 && !d->split) {
			punch_hole(d->addr + KB4 * (1 + k % (d->len / KB4 - 2)), KB4);
			d->split = 1;
		}
		dev_read(w, r, t);
		break;
	case 4:		/* shrink in place */
		if (d->len >= 2 * KB4 && !d->split) {
			uint64_t n = d->len - KB4 * (1 + k % (d->len / KB4 - 1));

			if (mremap(d->addr, d->len, n, 0) != MAP_FAILED)
				d->len = n;
		}
		dev_read(w, r, t);
		break;
	case 5:		/* move elsewhere */
		if (!d->split) {
			char *to = reserve(d->len, KB4);

			if (to) {
				p = mremap(d->addr, d->len, d->len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
				if (p == MAP_FAILED)
					munmap(to, d->len);
				else
					d->addr = p;
			}
		}
		dev_read(w, r, t);
		break;
	case 6:		/* fork: the child's copy of the mapping; it reads and maybe resets */
		w->st.forks++;
		pid = fork();
		if (pid == 0) {
			static struct vrhp_hp_config c;
			volatile uint64_t v = *(volatile uint64_t *)d->addr;

			(void)v;
			if (k & 1) {
				c.flags = VRHP_CFG_RESET;
				if (!ioctl(ctl, VRHP_IOC_HP_CONFIG, &c) && hugepage &&
				    rebuilt(c.outcome))
					_exit(3);
			}
			_exit(0);
		}
		if (pid > 0 && reap(pid, &status)) {
			if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
				violation(w, "a forked child's RESET rebuilt the tables while it mapped the %s table",
					  t ? "bridge" : "flow");
			else if (!WIFEXITED(status))
				violation(w, "a forked child reading a table mapping died of signal %d",
					  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		}
		break;
	default:
		dev_unmap(d);
	}
}

/* ---------------------------------------------------------------- files under the tables */

static void op_file(struct worker *w, struct rng *r)
{
	int g = have1g && (!have2m || chance(r, 15));
	int f = g ? F_G0 : pick_2m(r);
	const struct hfile *h = &files[f];
	uint64_t kind = below(r, 6), page = below(r, h->pages);
	int fd;

	if (!h->ok) {
		w->st.skipped++;
		return;
	}
	if (g && kind < 4) {	/* each costs a fresh 1 GiB page later: a budget */
		if (w->destroy_1g <= 0)
			kind = 4 + below(r, 2);
		else
			w->destroy_1g--;
	}
	switch (kind) {
	case 0:
		(void)!truncate(h->path, 0);
		break;
	case 1:
		(void)!truncate(h->path, (off_t)(page * h->ps));
		break;
	case 2:
	case 4:
		fd = open(h->path, O_RDWR);
		if (fd >= 0) {
			if (kind == 2)
				(void)!fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						 (off_t)(page * h->ps), (off_t)h->ps);
			else if (!g)	/* allocate what is missing (1 GiB: left to faults) */
				(void)!fallocate(fd, 0, 0, (off_t)(h->pages * h->ps));
			close(fd);
		}
		break;
	case 3:
		unlink(h->path);
		break;
	default:
		(void)!truncate(h->path, (off_t)(h->pages * h->ps));
	}
}

/* ---------------------------------------------------------------- episodes */

struct helper {
	struct worker w;
	int kind;
	uint64_t delay_us;
	struct vrhp_hp_config *cfg;
	int file;
	uint64_t page;
};

enum { H_CONFIG, H_TRUNCATE, H_PUNCH, H_UNLINK };

static void *helper_main(void *arg)
{
	struct helper *h = arg;
	const struct hfile *f = &files[h->file];
	int fd;

	self = &h->w;
	if (h->delay_us)
		usleep((useconds_t)h->delay_us);
	switch (h->kind) {
	case H_CONFIG:
		do_config(&h->w, h->cfg);
		break;
	case H_TRUNCATE:
		(void)!truncate(f->path, (off_t)(h->page * f->ps));
		break;
	case H_PUNCH:
		fd = open(f->path, O_RDWR);
		if (fd >= 0) {
			(void)!fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					 (off_t)(h->page * f->ps), (off_t)f->ps);
			close(fd);
		}
		break;
	default:
		unlink(f->path);
	}
	return NULL;
}

static void merge(struct stats *to, const struct stats *from)
{
	to->ioctls += from->ioctls;
	to->ok += from->ok;
	for (int i = 0; i < NIOC; i++)
		for (int e = 0; e < NERR; e++)
			to->err[i][e] += from->err[i][e];
	for (size_t o = 0; o < NOUT; o++)
		to->outcome[o] += from->outcome[o];
	for (int o = 0; o < NOPS; o++) {
		to->ops[o] += from->ops[o];
		to->op_s[o] += from->op_s[o];
	}
	to->sigbus += from->sigbus;
	to->signals += from->signals;
	to->forks += from->forks;
	to->killed += from->killed;
	to->skipped += from->skipped;
	to->violations += from->violations;
}

static int helper_run(struct worker *w, struct helper *h, pthread_t *th)
{
	h->w.id = w->id;
	h->w.n = w->n;
	if (pthread_create(th, NULL, helper_main, h)) {
		w->st.skipped++;
		return 0;
	}
	return 1;
}

static void helper_join(struct worker *w, struct helper *h, pthread_t th)
{
	pthread_join(th, NULL);
	merge(&w->st, &h->w.st);
	if (h->w.have_timer)
		timer_delete(h->w.timer);
}

/* One of the windows: a file destroyed, a large FILL, device mappings, a SIGKILL, a signal. */
static void op_episode(struct worker *w, struct rng *r)
{
	static __thread struct vrhp_hp_config c;
	struct helper *h = calloc(1, sizeof(*h));
	uint64_t kind = below(r, 5), d = 2 + below(r, 18), early = chance(r, 30);
	uint32_t t = (uint32_t)below(r, VRHP_NR_TABLES);
	/* a few of FILL's 1,024-key batches, so that it drops its locks in between */
	uint64_t cap = 2 * (tab[t].entries + tab[t].oentries), big = 4096 + below(r, 2048);
	pthread_t th;
	pid_t pid;
	int status, built = 0;

	if (big > cap)
		big = cap;
	if (!h)
		return;
	if (hugepage) {
		int geo = kind == 2 ? G_ONE : have2m ? G_2M_SPLIT : G_1G;

		built = build_config(w, r, &c, geo, T_NONE);
		c.flags = VRHP_CFG_RESET;
	}
	if (!hugepage && kind != 3)
		kind = kind == 4 ? 4 : 1;
	switch (kind) {
	case 0:		/* the config's file truncated, punched or unlinked while it waits */
		if (!built || (c.segs[0].page_size == VRHP_PAGE_1G && w->destroy_1g-- <= 0)) {
			w->st.skipped++;
			break;
		}
		h->kind = H_TRUNCATE + (int)below(r, 3);
		h->file = F_G0;
		for (int f = F_M0; f < NFILES; f++)
			if (!strcmp(files[f].path, c.segs[0].path))
				h->file = f;
		h->page = c.segs[0].offset / files[h->file].ps;
		h->delay_us = early ? 0 : d * 500;
		set_delay((unsigned)d);
		if (helper_run(w, h, &th)) {
			do_config(w, &c);
			helper_join(w, h, th);
		}
		set_delay(0);
		break;
	case 1:		/* a large FILL while a config waits in its window */
		if (hugepage && built) {
			h->kind = H_CONFIG;
			h->cfg = &c;
			set_delay((unsigned)d);
			if (helper_run(w, h, &th)) {
				usleep((useconds_t)(d * 250));
				do_fill(w, t, big, rnd(r), NULL);
				helper_join(w, h, th);
			}
			set_delay(0);
		} else {
			do_fill(w, t, big, rnd(r), NULL);
		}
		break;
	case 2:		/* the devices mapped and unmapped around a config in its window */
		if (!built) {
			w->st.skipped++;
			break;
		}
		h->kind = H_CONFIG;
		h->cfg = &c;
		set_delay((unsigned)d);
		if (helper_run(w, h, &th)) {
			for (int i = 0; i < 4; i++) {
				struct devmap *dm = &w->dm[i & 1];
				int fd = open(DEV[i & 1], O_RDONLY);
				void *p = fd < 0 ? MAP_FAILED :
					  mmap(NULL, KB4, PROT_READ, MAP_SHARED, fd, 0);

				if (fd >= 0)
					close(fd);
				if (p != MAP_FAILED) {
					dev_unmap(dm);
					dm->addr = p;
					dm->len = KB4;
					dm->hdr = 1;
					live_add(dm);
					if (i >= 2)
						dev_unmap(dm);
				}
				usleep((useconds_t)(d * 200));
			}
			helper_join(w, h, th);
		}
		set_delay(0);
		break;
	case 3:		/* SIGKILL for a child inside a config, a large FILL or PATTERN */
		if (hugepage && chance(r, 50))
			set_delay((unsigned)(d / 4 + 1));
		w->st.forks++;
		pid = fork();
		if (pid == 0) {
			struct vrhp_pattern p = { .table = t, .seed = rnd(r) | 1 };
			struct vrhp_fill f = { .table = t, .count = big, .seed = 3 };

			if (built && (t == 0))
				ioctl(ctl, VRHP_IOC_HP_CONFIG, &c);
			else if (chance(r, 50))
				ioctl(ctl, VRHP_IOC_FILL, &f);
			else
				ioctl(ctl, VRHP_IOC_PATTERN, &p);
			_exit(0);
		}
		if (pid > 0) {
			usleep((useconds_t)below(r, 3000));
			kill(pid, SIGKILL);
			if (reap(pid, &status) && WIFSIGNALED(status))
				w->st.killed++;
		}
		set_delay(0);
		break;
	default:	/* SIGALRM while pinning (or while filling) */
		alarm_in(w, 1 + below(r, 200));
		if (built)
			do_config(w, &c);
		else
			do_fill(w, t, big / 4, rnd(r), NULL);
		alarm_in(w, 0);
	}
	free(h);
}

/* ---------------------------------------------------------------- workers */

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	const unsigned *weights = hugepage ? W_HUGEPAGE : W_BTABLE;

	self = w;
	for (w->n = 0; w->n < w->calls; w->n++) {
		struct rng r = op_rng(w->id, w->n);
		int op = (int)pick(&r, weights, NOPS);
		double started = now_s();

		if (trace)
			fprintf(stderr, "%d %" PRIu64 " %s\n", w->id, w->n, OPNAME[op]);
		w->st.ops[op]++;
		switch (op) {
		case OP_FLOW_ADD: op_flow(w, &r, VRHP_IOC_FLOW_ADD); break;
		case OP_FLOW_DEL: op_flow(w, &r, VRHP_IOC_FLOW_DEL); break;
		case OP_FLOW_GET: op_flow(w, &r, VRHP_IOC_FLOW_GET); break;
		case OP_BRIDGE_ADD: op_bridge(w, &r, VRHP_IOC_BRIDGE_ADD); break;
		case OP_BRIDGE_DEL: op_bridge(w, &r, VRHP_IOC_BRIDGE_DEL); break;
		case OP_BRIDGE_GET: op_bridge(w, &r, VRHP_IOC_BRIDGE_GET); break;
		case OP_FILL: op_fill(w, &r); break;
		case OP_STATS: op_stats(w, &r); break;
		case OP_INFO: op_info(w); break;
		case OP_PATTERN: op_pattern(w, &r); break;
		case OP_MALFORMED: op_malformed(w, &r); break;
		case OP_CONFIG: op_config(w, &r); break;
		case OP_HOSTILE: op_hostile(w, &r); break;
		case OP_DEVMAP: op_devmap(w, &r); break;
		case OP_FILE: op_file(w, &r); break;
		default: op_episode(w, &r); break;
		}
		w->st.op_s[op] += now_s() - started;
	}
	for (int t = 0; t < VRHP_NR_TABLES; t++) {
		dev_unmap(&w->dm[t]);
		drop_view(&w->view[t]);
	}
	for (int i = 0; i < NREG; i++)
		unmap_region(&w->reg[i]);
	if (w->have_timer)
		timer_delete(w->timer);
	w->st.signals += (uint64_t)w->signals;
	return NULL;
}

/* ---------------------------------------------------------------- setup, adoption, end */

struct reach {
	int n;
	char name[REACH_ROWS][24];
	long long calls[REACH_ROWS], reached[REACH_ROWS];
};

static void read_reach(struct reach *rc)
{
	FILE *f = fopen(PARAMS "reach", "r");

	rc->n = 0;
	if (!f)
		return;
	while (rc->n < REACH_ROWS && fscanf(f, "%23s %lld %lld", rc->name[rc->n],
					     &rc->calls[rc->n], &rc->reached[rc->n]) == 3)
		rc->n++;
	fclose(f);
}

/* A 2 MiB hugetlbfs mount with pages in its pool, from /proc/mounts. */
static int find_2m(void)
{
	char dev[256], dir[256], type[64], opts[512];
	FILE *f = fopen("/proc/mounts", "r");
	FILE *pool = fopen("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "r");
	long pages = 0;
	int found = 0;

	if (pool) {
		if (fscanf(pool, "%ld", &pages) != 1)
			pages = 0;
		fclose(pool);
	}
	if (!f)
		return 0;
	while (!found && fscanf(f, "%255s %255s %63s %511s %*d %*d", dev, dir, type, opts) == 4)
		if (!strcmp(type, "hugetlbfs") && strstr(opts, "pagesize=2M") &&
		    strlen(dir) < sizeof(mount2m)) {
			memcpy(mount2m, dir, strlen(dir) + 1);
			found = 1;
		}
	fclose(f);
	if (found && pages <= 0) {
		skip_note("2 MiB pages: a 2 MiB hugetlbfs mount but no 2 MiB pool");
		return 0;
	}
	if (!found)
		skip_note("2 MiB pages: no 2 MiB hugetlbfs mount (2 MiB and mixed geometries)");
	return found;
}

static long free_1g(void)
{
	FILE *f = fopen("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", "r");
	long n = 0;

	if (f) {
		if (fscanf(f, "%ld", &n) != 1)
			n = 0;
		fclose(f);
	}
	return n;
}

static void setup_files(const char *dir)
{
	const char *dir1g = mount1g;
	uint64_t need = pages_for(tab[0].file_bytes, VRHP_PAGE_2M) +
			pages_for(tab[1].file_bytes, VRHP_PAGE_2M) + 1;
	struct stat sb;

	if (strlen(dir) >= sizeof(mount1g)) {
		errno = ENAMETOOLONG;
		die("MOUNT_DIR");
	}
	memcpy(mount1g, dir, strlen(dir) + 1);
	snprintf(files[F_G0].path, VRHP_PATH_MAX, "%s/dfz-g0", dir1g);
	files[F_G0].ps = VRHP_PAGE_1G;
	files[F_G0].pages = 1;
	have1g = tab[0].file_bytes + tab[1].file_bytes <= VRHP_PAGE_1G &&
		 (free_1g() > 0 || stat(files[F_G0].path, &sb) == 0);
	if (!have1g)
		skip_note("1 GiB pages: no free 1 GiB page for MOUNT_DIR/dfz-g0, or tables too big");
	files[F_G0].ok = have1g;
	have2m = find_2m();
	for (int i = 0; i < M2_FILES + 2; i++) {
		struct hfile *h = &files[F_M0 + i];

		if (i < M2_FILES)
			snprintf(h->path, VRHP_PATH_MAX, "%s/dfz-m%d", mount2m, i);
		else
			snprintf(h->path, VRHP_PATH_MAX, "%s/dfz-final-%s", have2m ? mount2m : dir1g,
				 i == M2_FILES ? "flow" : "bridge");
		h->ps = have2m ? VRHP_PAGE_2M : VRHP_PAGE_1G;
		h->pages = i < M2_FILES ? (need > 4 ? need : 4) : 0;
		h->ok = have2m && i < M2_FILES;
	}
	if (have2m && need > 16) {
		skip_note("2 MiB pages: tables too big for the fuzzer's 2 MiB files");
		have2m = 0;
		for (int i = 0; i < M2_FILES; i++)
			files[F_M0 + i].ok = 0;
	}
}

/* Offer the segments a previous run left in `state` without RESET: adoption. */
static void adopt(struct worker *w, const char *state, FILE *out)
{
	static struct vrhp_hp_config c;
	struct vrhp_stats st;
	char path[VRHP_PATH_MAX];
	unsigned long long off, len, ps, used[VRHP_NR_TABLES] = { 0, 0 };
	unsigned table;
	int e, n = 0;
	FILE *f = fopen(state, "r");
	char line[400];

	fprintf(out, "\"adopt\": ");
	if (!f) {
		fprintf(out, "null, ");
		return;
	}
	memset(&c, 0, sizeof(c));
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "used %u %llu", &table, &off) == 2 && table < VRHP_NR_TABLES) {
			used[table] = off;
		} else if (sscanf(line, "seg %u %127s %llu %llu %llu", &table, path, &off, &len,
				  &ps) == 5 && table < VRHP_NR_TABLES && n < VRHP_NR_TABLES &&
			   (ps == VRHP_PAGE_2M || ps == VRHP_PAGE_1G)) {
			uint64_t base = off & ~(ps - 1);
			uint64_t maplen = round_up(off - base + len, ps);
			int fd = open(path, O_RDWR);
			char *p = fd < 0 ? MAP_FAILED :
				  mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base);

			if (fd >= 0)
				close(fd);
			if (p == MAP_FAILED)
				continue;	/* left mapped until exit */
			c.segs[n].uaddr = (uintptr_t)p + (off - base);
			c.segs[n].len = len;
			c.segs[n].page_size = ps;
			c.segs[n].table = table;
			c.segs[n].offset = off;
			snprintf(c.segs[n].path, sizeof(c.segs[n].path), "%s", path);
			n++;
		}
	}
	fclose(f);
	c.nr_segs = (uint32_t)n;
	e = do_config(w, &c);
	fprintf(out, "{\"segments\": %d, \"errno\": \"%s\", \"outcome\": %u, \"actions\": [%u, %u], "
		"\"used_before\": [%llu, %llu], \"used_after\": [", n, e ? strerrorname_np(e) : "OK",
		e ? 255u : c.outcome, c.tables[0].action, c.tables[1].action, used[0], used[1]);
	for (uint32_t t = 0; t < VRHP_NR_TABLES; t++) {
		memset(&st, 0, sizeof(st));
		st.table = t;
		fprintf(out, "%s%lld", t ? ", " : "",
			xioctl(w, VRHP_IOC_STATS, &st) ? -1ll : (long long)st.used);
	}
	fprintf(out, "]}, ");
}

static int setup_config(struct worker *w, FILE *out, const char *name)
{
	static struct vrhp_hp_config c;
	struct rng r = op_rng(MAX_THREADS, 0);
	int e = -1;

	if (build_config(w, &r, &c, have2m ? G_2M_SPLIT : G_1G, T_NONE)) {
		c.flags = VRHP_CFG_RESET;
		e = do_config(w, &c);
	}
	fprintf(out, "\"%s\": {\"errno\": \"%s\", \"outcome\": %u}, ", name,
		e < 0 ? "not built" : e ? strerrorname_np(e) : "OK", e ? 255u : c.outcome);
	return e;
}

/* Clean tables on fresh files, filled, and their segments in `state`. */
static void finish(struct worker *w, const char *state, FILE *out)
{
	static struct vrhp_hp_config c;
	struct vrhp_fill fill[VRHP_NR_TABLES];
	struct vrhp_info inf;
	FILE *f;
	int e;

	set_delay(0);
	memset(&c, 0, sizeof(c));
	c.flags = VRHP_CFG_RESET;
	c.nr_segs = VRHP_NR_TABLES;
	for (uint32_t t = 0; t < VRHP_NR_TABLES; t++) {
		struct hfile *h = &files[F_M0 + M2_FILES + t];
		uint64_t n = pages_for(tab[t].file_bytes, h->ps);
		int fd = open(h->path, O_RDWR | O_CREAT, 0600);
		char *p = fd < 0 ? MAP_FAILED :
			  mmap(NULL, n * h->ps, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

		if (fd >= 0)
			close(fd);
		if (p == MAP_FAILED) {
			fprintf(out, "\"final\": {\"errno\": \"%s\", \"outcome\": 255}, ",
				strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
			return;
		}
		c.segs[t].uaddr = (uintptr_t)p;
		c.segs[t].len = tab[t].file_bytes;
		c.segs[t].page_size = h->ps;
		c.segs[t].table = t;
		snprintf(c.segs[t].path, sizeof(c.segs[t].path), "%s", h->path);
	}
	e = do_config(w, &c);
	for (uint32_t t = 0; t < VRHP_NR_TABLES; t++) {
		memset(&fill[t], 0, sizeof(fill[t]));
		if (!e)
			do_fill(w, t, tab[t].entries, 7 + t, &fill[t]);
	}
	get_info(w, &inf);
	fprintf(out, "\"final\": {\"errno\": \"%s\", \"outcome\": %u, \"inserted\": [%" PRIu64
		", %" PRIu64 "]}, ", e ? strerrorname_np(e) : "OK", e ? 255u : c.outcome,
		(uint64_t)fill[0].inserted, (uint64_t)fill[1].inserted);
	if (e || c.outcome != VRHP_OUT_SUCCESS)
		return;
	f = fopen(state, "w");
	if (!f)
		return;
	for (uint32_t t = 0; t < VRHP_NR_TABLES; t++) {
		const struct vrhp_seg_info *s = seg_of(&inf, t);
		struct vrhp_stats st = { .table = t };

		if (s)
			fprintf(f, "seg %u %s %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", t, s->path,
				(uint64_t)s->offset, (uint64_t)s->len, (uint64_t)s->page_size);
		if (!xioctl(w, VRHP_IOC_STATS, &st))
			fprintf(f, "used %u %" PRIu64 "\n", t, (uint64_t)st.used);
	}
	fclose(f);
}

/* ---------------------------------------------------------------- output */

static void print_reach(FILE *out, const char *key, const struct reach *a,
			const struct reach *b, int which)
{
	fprintf(out, "\"%s\": {", key);
	for (int i = 0; i < b->n; i++) {
		long long before = 0, after = which ? b->reached[i] : b->calls[i];

		for (int j = 0; j < a->n; j++)
			if (!strcmp(a->name[j], b->name[i]))
				before = which ? a->reached[j] : a->calls[j];
		fprintf(out, "%s\"%s\": %lld", i ? ", " : "", b->name[i], after - before);
	}
	fprintf(out, "}, ");
}

static const char *errname(int e)
{
	if (e == 0)
		return "OK";
	if (e == NERR - 1)
		return "E_LARGE";
	return strerrorname_np(e) ? strerrorname_np(e) : "E?";
}

static void print_stats(FILE *out, const struct stats *st)
{
	fprintf(out, "\"ioctls\": %" PRIu64 ", \"ok\": %" PRIu64 ", \"errno\": {", st->ioctls,
		st->ok);
	for (int i = 0, n = 0; i < NIOC; i++) {
		int m = 0;

		for (int e = 0; e < NERR; e++) {
			if (!st->err[i][e])
				continue;
			if (!m++)
				fprintf(out, "%s\"%s\": {", n++ ? ", " : "", IOC[i].name);
			fprintf(out, "%s\"%s\": %" PRIu64, m > 1 ? ", " : "", errname(e),
				st->err[i][e]);
		}
		if (m)
			fprintf(out, "}");
	}
	fprintf(out, "}, \"outcomes\": {");
	for (size_t o = 0, n = 0; o < NOUT; o++)
		if (st->outcome[o])
			fprintf(out, "%s\"%s\": %" PRIu64, n++ ? ", " : "", OUTCOME[o],
				st->outcome[o]);
	fprintf(out, "}, \"ops\": {");
	for (int o = 0; o < NOPS; o++)
		fprintf(out, "%s\"%s\": %" PRIu64, o ? ", " : "", OPNAME[o], st->ops[o]);
	fprintf(out, "}, \"op_ms\": {");
	for (int o = 0; o < NOPS; o++)
		fprintf(out, "%s\"%s\": %.0f", o ? ", " : "", OPNAME[o], st->op_s[o] * 1e3);
	fprintf(out, "}, \"sigbus\": %" PRIu64 ", \"signals\": %" PRIu64 ", \"forks\": %" PRIu64
		", \"killed\": %" PRIu64 ", \"skipped_ops\": %" PRIu64 ", \"violations\": %" PRIu64
		", ", st->sigbus, st->signals, st->forks, st->killed, st->skipped, st->violations);
}

static void print_strings(FILE *out, const char *key, char (*list)[240], int n)
{
	fprintf(out, "\"%s\": [", key);
	for (int i = 0; i < n; i++) {
		const char *sp = list[i];

		fprintf(out, "%s\"", i ? ", " : "");
		for (; *sp; sp++)
			fputc(*sp == '"' || *sp == '\\' ? '\'' : *sp, out);
		fputc('"', out);
	}
	fprintf(out, "]");
}

int main(int argc, char **argv)
{
	static struct worker *ws[MAX_THREADS];
	static struct worker w0;
	static struct stats total;
	struct reach before, after;
	struct vrhp_info inf;
	const char *backend = "hugepage", *state = NULL;
	pthread_t th[MAX_THREADS];
	unsigned long calls;
	int threads;
	double t0, elapsed;
	struct sigaction sa;
	FILE *out = stdout;

	if (argc < 5) {
		fprintf(stderr, "usage: %s SEED CALLS THREADS MOUNT_DIR [--backend hugepage|btable] "
			"[--state FILE] [--trace]\n", argv[0]);
		return 2;
	}
	for (int i = 5; i < argc; i++) {
		if (!strcmp(argv[i], "--backend") && i + 1 < argc)
			backend = argv[++i];
		else if (!strcmp(argv[i], "--state") && i + 1 < argc)
			state = argv[++i];
		else if (!strcmp(argv[i], "--trace"))
			trace = 1;
		else {
			fprintf(stderr, "vrhp_deepfuzz: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	seed = strtoull(argv[1], NULL, 0);
	calls = strtoul(argv[2], NULL, 0);
	threads = atoi(argv[3]);
	if (threads < 1 || threads > MAX_THREADS ||
	    (strcmp(backend, "hugepage") && strcmp(backend, "btable"))) {
		fprintf(stderr, "vrhp_deepfuzz: THREADS 1..%d, --backend hugepage|btable\n",
			MAX_THREADS);
		return 2;
	}
	hugepage = !strcmp(backend, "hugepage");
	ctl = open("/dev/vrhp", O_RDWR);
	if (ctl < 0)
		die("/dev/vrhp");
	self = &w0;
	w0.id = MAX_THREADS;
	get_info(&w0, &inf);
	if (inf.mem != (hugepage ? VRHP_BACKEND_HUGEPAGE : VRHP_BACKEND_BTABLE)) {
		errno = EINVAL;
		die("the module was loaded with another mem= than --backend");
	}
	for (int t = 0; t < VRHP_NR_TABLES; t++) {
		tab[t].entries = inf.tables[t].entries;
		tab[t].oentries = inf.tables[t].oentries;
		tab[t].esz = inf.tables[t].entry_size;
		tab[t].file_bytes = inf.tables[t].file_bytes;
		if (!tab[t].entries || !tab[t].oentries || !tab[t].esz) {
			errno = EINVAL;
			die("INFO reports a table of size 0");
		}
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigbus;	/* in an armed read or write: the mapping faulted */
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
	sa.sa_handler = on_alarm;	/* no SA_RESTART: an interrupted sleep returns */
	sigaction(SIGALRM, &sa, NULL);
	guard_page = mmap(NULL, 2 * KB4, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro_page = mmap(NULL, KB4, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	anon = mmap(NULL, 4u << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (guard_page == MAP_FAILED || ro_page == MAP_FAILED || anon == MAP_FAILED)
		die("mmap");
	mprotect(guard_page + KB4, KB4, PROT_NONE);
	memset(anon, 0x5a, 4u << 20);
	if (hugepage) {
		setup_files(argv[4]);
	} else {
		skip_note("btable: no huge-page segments, no writable table memory, no file operations");
	}

	read_reach(&before);
	t0 = now_s();
	fprintf(out, "{\"seed\": %" PRIu64 ", \"calls\": %lu, \"threads\": %d, \"backend\": \"%s\", "
		"\"mount_1g\": %s%s%s, \"mount_2m\": %s%s%s, ", seed, calls, threads, backend,
		have1g ? "\"" : "", have1g ? argv[4] : "null", have1g ? "\"" : "",
		have2m ? "\"" : "", have2m ? mount2m : "null", have2m ? "\"" : "");
	if (hugepage && state && inf.state == VRHP_STATE_UNINIT)
		adopt(&w0, state, out);
	else
		fprintf(out, "\"adopt\": null, ");
	get_info(&w0, &inf);
	if (hugepage && inf.state == VRHP_STATE_UNINIT)
		setup_config(&w0, out, "setup");
	else
		fprintf(out, "\"setup\": null, ");
	fflush(out);

	for (int t = 0; t < threads; t++) {
		ws[t] = calloc(1, sizeof(*ws[t]));
		if (!ws[t])
			die("calloc");
		ws[t]->id = t;
		ws[t]->calls = calls / (unsigned long)threads + ((unsigned long)t < calls % (unsigned long)threads);
		ws[t]->destroy_1g = 1 + (int)(ws[t]->calls / 40000);
		if (pthread_create(&th[t], NULL, worker_main, ws[t]))
			die("pthread_create");
	}
	for (int t = 0; t < threads; t++) {
		pthread_join(th[t], NULL);
		merge(&total, &ws[t]->st);
	}
	elapsed = now_s() - t0;
	set_delay(0);
	if (hugepage && state)
		finish(&w0, state, out);
	else
		fprintf(out, "\"final\": null, ");
	merge(&total, &w0.st);
	read_reach(&after);

	fprintf(out, "\"elapsed_s\": %.2f, \"calls_per_s\": %.0f, ", elapsed,
		elapsed > 0 ? (double)calls / elapsed : 0.0);
	print_stats(out, &total);
	fprintf(out, "\"reach_before\": {");
	for (int i = 0; i < before.n; i++)
		fprintf(out, "%s\"%s\": [%lld, %lld]", i ? ", " : "", before.name[i],
			before.calls[i], before.reached[i]);
	fprintf(out, "}, ");
	print_reach(out, "reach_calls", &before, &after, 0);
	print_reach(out, "reached", &before, &after, 1);
	print_strings(out, "skipped", skipped, nskipped);
	fprintf(out, ", ");
	print_strings(out, "violation_notes", notes, nnotes);
	fprintf(out, "}\n");
	fflush(out);
	return 0;
}
