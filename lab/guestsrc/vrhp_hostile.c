/* Hostile but privileged callers of vrhp: huge-page segments that alias, are private, or
 * are not the file they name; table memory with cyclic chains; churn past the overflow
 * area; a reset that is refused; a config that races a mapping; a flood of rejects.
 * Usage: vrhp_hostile DIR SCENARIO [ARGS]   (DIR: a hugetlbfs mount of the page size used)
 * A scenario that offers one hostile segment offers a proper one for the other table, so
 * that a module that accepts the hostile one goes on to build both tables.
 * Prints one JSON object. Exit 0 when the scenario ran, 2 when it could not be set up. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vrhp_uapi.h"  /* -I kmod/include */

static const char *dir;
static int ctl_fd = -1;

static void die(const char *what)
{
	printf("{\"error\": \"%s: %s\"}\n", what, strerror(errno));
	exit(2);
}

static int ctl(void)
{
	if (ctl_fd < 0 && (ctl_fd = open("/dev/vrhp", O_RDWR)) < 0)
		die("open /dev/vrhp");
	return ctl_fd;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static const char *ename(int e)
{
	return e ? strerrorname_np(e) : "OK";
}

static void get_info(struct vrhp_info *inf)
{
	memset(inf, 0, sizeof(*inf));
	if (ioctl(ctl(), VRHP_IOC_INFO, inf))
		die("INFO");
}

static uint64_t parse_size(const char *s)
{
	if (!strcmp(s, "1G"))
		return VRHP_PAGE_1G;
	if (!strcmp(s, "2M"))
		return VRHP_PAGE_2M;
	errno = EINVAL;
	die("page size must be 1G or 2M");
	return 0;
}

static uint64_t round_up(uint64_t v, uint64_t to)
{
	return (v + to - 1) / to * to;
}

/* DIR/NAME, created with `bytes` and mapped from `offset`; fills *path. */
static void *map_file(const char *name, uint64_t bytes, uint64_t offset, uint64_t len,
		      int flags, void *at, char *path)
{
	int fd;
	void *p;

	snprintf(path, VRHP_PATH_MAX, "%s/%s", dir, name);
	fd = open(path, O_CREAT | O_RDWR, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)bytes))
		die(path);
	p = mmap(at, len, PROT_READ | PROT_WRITE, flags | MAP_POPULATE | (at ? MAP_FIXED : 0),
		 fd, (off_t)offset);
	close(fd);
	if (p == MAP_FAILED)
		die(path);
	return p;
}

/* An address range of `len` bytes aligned to `align`, reserved and unmapped for MAP_FIXED. */
static char *reserve(uint64_t len, uint64_t align)
{
	char *p = mmap(NULL, len + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);

	if (p == MAP_FAILED)
		die("reserve");
	return (char *)round_up((uintptr_t)p, align);
}

static void set_seg(struct vrhp_hp_config *c, uint32_t table, const void *at, uint64_t len,
		    uint64_t ps, const char *path, uint64_t offset)
{
	struct vrhp_segment *s = &c->segs[c->nr_segs++];

	s->uaddr = (uintptr_t)at;
	s->len = len;
	s->page_size = ps;
	s->table = table;
	s->offset = offset;
	snprintf(s->path, VRHP_PATH_MAX, "%s", path);
}

/* A proper segment for `table` in DIR, so that only the hostile one can be refused. */
static void companion(struct vrhp_hp_config *c, uint32_t table, uint64_t ps)
{
	struct vrhp_info inf;
	char path[VRHP_PATH_MAX];
	uint64_t len;
	void *p;

	get_info(&inf);
	len = round_up(inf.tables[table].file_bytes, ps);
	p = map_file(table ? "bridge" : "flow", len, 0, len, MAP_SHARED, NULL, path);
	set_seg(c, table, p, len, ps, path, 0);
}

/* HP_CONFIG and its answer as JSON fields, with the state and generations after it. */
static void config_and_print(const char *scenario, struct vrhp_hp_config *c)
{
	struct vrhp_info inf;
	double t0 = now_ms();
	int e = ioctl(ctl(), VRHP_IOC_HP_CONFIG, c) ? errno : 0;
	double ms = now_ms() - t0;

	get_info(&inf);
	printf("{\"scenario\": \"%s\", \"errno\": \"%s\", \"outcome\": %u, \"ms\": %.1f, "
	       "\"state\": %u, \"tables\": [", scenario, ename(e), e ? 255u : c->outcome, ms,
	       inf.state);
	for (int i = 0; i < VRHP_NR_TABLES; i++)
		printf("%s{\"action\": %u, \"err\": \"%s\", \"backend\": %u, "
		       "\"instance\": %" PRIu64 "}", i ? ", " : "", c->tables[i].action,
		       ename(-c->tables[i].err), inf.tables[i].backend,
		       (uint64_t)inf.tables[i].instance);
	printf("]}\n");
}

/* The crash this scenario once was: one huge page mapped at adjacent addresses. */
static int alias(uint64_t ps, uint32_t table)
{
	struct vrhp_hp_config c = {0};
	struct vrhp_info inf;
	char path[VRHP_PATH_MAX];
	uint64_t n, i;
	char *base;

	get_info(&inf);
	n = round_up(inf.tables[table].file_bytes, ps) / ps;
	base = reserve(n * ps, ps);
	for (i = 0; i < n; i++)
		map_file("alias", ps, 0, ps, MAP_SHARED, base + i * ps, path);
	set_seg(&c, table, base, n * ps, ps, path, 0);
	companion(&c, !table, ps);
	config_and_print("alias", &c);
	return 0;
}

/* Both tables on two mappings of the same file: the same physical pages. */
static int cross(uint64_t ps)
{
	struct vrhp_hp_config c = {0};
	struct vrhp_info inf;
	char path[VRHP_PATH_MAX];
	uint64_t len[VRHP_NR_TABLES];
	void *a, *b;

	get_info(&inf);
	for (int i = 0; i < VRHP_NR_TABLES; i++)
		len[i] = round_up(inf.tables[i].file_bytes, ps);
	a = map_file("shared", len[0], 0, len[0], MAP_SHARED, NULL, path);
	b = map_file("shared", len[0], 0, len[1], MAP_SHARED, NULL, path);
	set_seg(&c, VRHP_TABLE_FLOW, a, len[0], ps, path, 0);
	set_seg(&c, VRHP_TABLE_BRIDGE, b, len[1], ps, path, 0);
	config_and_print("cross", &c);
	return 0;
}

/* The flow table on memory that is not what the segment names. */
static int not_the_file(const char *scenario, uint64_t ps)
{
	struct vrhp_hp_config c = {0};
	struct vrhp_info inf;
	char path[VRHP_PATH_MAX], other[VRHP_PATH_MAX];
	uint64_t len;
	void *p;

	get_info(&inf);
	len = round_up(inf.tables[0].file_bytes, ps);
	if (!strcmp(scenario, "private")) {
		p = map_file("flow", len, 0, len, MAP_PRIVATE, NULL, path);
		set_seg(&c, VRHP_TABLE_FLOW, p, len, ps, path, 0);
	} else if (!strcmp(scenario, "wrong-path")) {
		map_file("other", ps, 0, ps, MAP_SHARED, NULL, other);
		p = map_file("flow", len, 0, len, MAP_SHARED, NULL, path);
		set_seg(&c, VRHP_TABLE_FLOW, p, len, ps, other, 0);
	} else {	/* wrong-offset: the file's second part, said to be its start */
		p = map_file("flow", 2 * len, len, len, MAP_SHARED, NULL, path);
		set_seg(&c, VRHP_TABLE_FLOW, p, len, ps, path, 0);
	}
	companion(&c, VRHP_TABLE_BRIDGE, ps);
	config_and_print(scenario, &c);
	return 0;
}

/* 64 GiB of anonymous memory offered as a 1 GiB-page segment. */
static int anon_huge(void)
{
	struct vrhp_hp_config c = {0};
	uint64_t len = VRHP_SEG_MAX_LEN;
	char *p = reserve(len, VRHP_PAGE_1G);

	if (mmap(p, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
		die("mmap 64 GiB");
	set_seg(&c, VRHP_TABLE_FLOW, p, len, VRHP_PAGE_1G, "/anon", 0);
	companion(&c, VRHP_TABLE_BRIDGE, VRHP_PAGE_1G);
	config_and_print("anon-huge", &c);
	return 0;
}

/* RESET with nothing usable, under fallback=0: refused, and the tables stay. */
static int reset_refused(void)
{
	struct vrhp_hp_config c = {0};

	c.flags = VRHP_CFG_RESET;
	config_and_print("reset-refused", &c);
	return 0;
}

static void flow_key(struct vrhp_flow_key *k, uint32_t round, uint32_t i)
{
	memset(k, 0, sizeof(*k));
	k->family = VRHP_AF_INET;
	k->src[0] = 10;
	memcpy(k->src + 1, &i, 3);
	memcpy(k->dst, &round, 4);
	k->proto = 6;
	k->sport = (uint16_t)i;
	k->dport = 80;
}

/* Add `keys` flows, delete them all, again with new keys, `rounds` times. */
static int churn(uint32_t rounds, uint32_t keys)
{
	struct vrhp_flow_req r;
	struct vrhp_stats st = { .table = VRHP_TABLE_FLOW };
	uint64_t added = 0, nospc = 0, other = 0, first_nospc_round = 0;

	for (uint32_t round = 1; round <= rounds; round++) {
		for (uint32_t i = 0; i < keys; i++) {
			memset(&r, 0, sizeof(r));
			flow_key(&r.key, round, i);
			r.action = 1;
			if (!ioctl(ctl(), VRHP_IOC_FLOW_ADD, &r))
				added++;
			else if (errno == ENOSPC && !nospc++)
				first_nospc_round = round;
			else if (errno != ENOSPC)
				other++;
		}
		for (uint32_t i = 0; i < keys; i++) {
			memset(&r, 0, sizeof(r));
			flow_key(&r.key, round, i);
			ioctl(ctl(), VRHP_IOC_FLOW_DEL, &r);
		}
	}
	if (ioctl(ctl(), VRHP_IOC_STATS, &st))
		die("STATS");
	printf("{\"scenario\": \"churn\", \"rounds\": %u, \"keys\": %u, \"added\": %" PRIu64
	       ", \"nospc\": %" PRIu64 ", \"first_nospc_round\": %" PRIu64 ", \"other_errors\": %"
	       PRIu64 ", \"used_after\": %" PRIu64 ", \"oentries\": %" PRIu64 "}\n", rounds, keys,
	       added, nospc, first_nospc_round, other, (uint64_t)st.used, (uint64_t)st.oentries);
	return 0;
}

static void timed(const char *name, unsigned long cmd, void *arg, int last)
{
	double t0 = now_ms();
	int e = ioctl(ctl(), cmd, arg) ? errno : 0;

	printf("\"%s\": {\"errno\": \"%s\", \"ms\": %.1f}%s", name, ename(e), now_ms() - t0,
	       last ? "" : ", ");
}

/*
 * Through the agent's writable mapping of the flow file: every bucket's chain leads into
 * one cycle through all overflow entries. Then STATS, GET and FILL must end quickly.
 */
static int cycle(const char *file)
{
	struct vrhp_info inf;
	struct vrhp_stats st = { .table = VRHP_TABLE_FLOW };
	struct vrhp_flow_req get;
	struct vrhp_fill fill = { .table = VRHP_TABLE_FLOW, .count = 4096, .seed = 5 };
	const struct vrhp_table_info *t;
	uint64_t b, o, len;
	char *base;
	int fd;

	get_info(&inf);
	t = &inf.tables[VRHP_TABLE_FLOW];
	len = t->file_bytes;
	fd = open(file, O_RDWR);
	if (fd < 0)
		die(file);
	base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		die("mmap flow file");
	for (o = 0; o < t->oentries; o++) {
		uint32_t *e = (uint32_t *)(base + VRHP_HDR_SIZE + (t->entries + o) * t->entry_size);

		e[0] = VRHP_EF_LINKED | VRHP_EF_VALID;
		e[1] = (uint32_t)((o + 1) % t->oentries + 1);
	}
	for (b = 0; b < t->entries / VRHP_BUCKET_SIZE; b++) {
		uint64_t tail = b * VRHP_BUCKET_SIZE + VRHP_BUCKET_SIZE - 1;
		uint32_t *e = (uint32_t *)(base + VRHP_HDR_SIZE + tail * t->entry_size);

		for (uint64_t i = 0; i < VRHP_BUCKET_SIZE; i++)
			((uint32_t *)(base + VRHP_HDR_SIZE +
				      (b * VRHP_BUCKET_SIZE + i) * t->entry_size))[0] = VRHP_EF_VALID;
		e[1] = 1;
	}
	memset(&get, 0, sizeof(get));
	flow_key(&get.key, 0xffffffff, 7);
	printf("{\"scenario\": \"cycle\", \"buckets\": %" PRIu64 ", \"oentries\": %" PRIu64 ", ",
	       (uint64_t)(t->entries / VRHP_BUCKET_SIZE), (uint64_t)t->oentries);
	timed("stats", VRHP_IOC_STATS, &st, 0);
	timed("get", VRHP_IOC_FLOW_GET, &get, 0);
	timed("fill", VRHP_IOC_FILL, &fill, 1);
	printf(", \"fill_inserted\": %" PRIu64 "}\n", (uint64_t)fill.inserted);
	close(fd);
	return 0;
}

struct race {
	struct vrhp_hp_config cfg;
	int cfg_errno, map_errno, info_errno;
	double t0, cfg_ms, map_ms, info_ms;
	uint64_t delay_ms;
};

static void *race_config(void *arg)
{
	struct race *r = arg;

	r->cfg_errno = ioctl(ctl(), VRHP_IOC_HP_CONFIG, &r->cfg) ? errno : 0;
	r->cfg_ms = now_ms() - r->t0;
	return NULL;
}

static void *race_map(void *arg)
{
	struct race *r = arg;
	int fd = open("/dev/vrhp_flow", O_RDONLY);
	void *p;

	usleep(r->delay_ms * 1000 / 4);
	p = fd < 0 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	r->map_errno = p == MAP_FAILED ? errno : 0;
	if (p != MAP_FAILED)
		munmap(p, 4096);
	r->map_ms = now_ms() - r->t0;
	if (fd >= 0)
		close(fd);
	return NULL;
}

static void *race_info(void *arg)
{
	struct race *r = arg;
	struct vrhp_info inf;

	usleep(r->delay_ms * 1000 / 2);
	r->info_errno = ioctl(ctl(), VRHP_IOC_INFO, &inf) ? errno : 0;
	r->info_ms = now_ms() - r->t0;
	return NULL;
}

/*
 * HP_CONFIG of real segments while the module sleeps `delay_ms` (fault_cfg_delay_ms)
 * in its critical window; meanwhile another thread of this process maps the flow
 * device and a third asks INFO. Waits at most `wait_ms` for all three.
 */
static int lockorder(uint64_t ps, uint64_t delay_ms, uint64_t wait_ms)
{
	static struct race r;
	struct vrhp_info inf;
	char path[VRHP_PATH_MAX];
	pthread_t th[3];
	void *(*fn[3])(void *) = { race_config, race_map, race_info };
	double deadline;
	int i;

	get_info(&inf);
	r.delay_ms = delay_ms;
	for (i = 0; i < VRHP_NR_TABLES; i++) {
		uint64_t len = round_up(inf.tables[i].file_bytes, ps);
		void *p = map_file(i ? "bridge" : "flow", len, 0, len, MAP_SHARED, NULL, path);

		set_seg(&r.cfg, i, p, len, ps, path, 0);
	}
	r.cfg_ms = r.map_ms = r.info_ms = -1;
	r.t0 = now_ms();
	for (i = 0; i < 3; i++)
		if (pthread_create(&th[i], NULL, fn[i], &r))
			die("pthread_create");
	deadline = r.t0 + wait_ms;
	while (now_ms() < deadline && (r.cfg_ms < 0 || r.map_ms < 0 || r.info_ms < 0))
		usleep(10000);
	printf("{\"scenario\": \"lockorder\", \"delay_ms\": %" PRIu64 ", \"wait_ms\": %" PRIu64
	       ", \"config\": {\"errno\": \"%s\", \"outcome\": %u, \"ms\": %.1f}, "
	       "\"map\": {\"errno\": \"%s\", \"ms\": %.1f}, \"info\": {\"errno\": \"%s\", "
	       "\"ms\": %.1f}}\n", delay_ms, wait_ms, ename(r.cfg_errno), r.cfg.outcome, r.cfg_ms,
	       ename(r.map_errno), r.map_ms, ename(r.info_errno), r.info_ms);
	fflush(stdout);
	if (r.cfg_ms < 0 || r.map_ms < 0 || r.info_ms < 0)
		_exit(3);	/* threads stuck in the kernel: do not wait for them */
	for (i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	return 0;
}

/* `n` HP_CONFIG calls that are each refused with a log line. */
static int flood(uint64_t n)
{
	struct vrhp_hp_config c;
	uint64_t refused = 0;
	double t0 = now_ms();

	for (uint64_t i = 0; i < n; i++) {
		memset(&c, 0, sizeof(c));
		c.nr_segs = 1;
		c.segs[0].page_size = 12345;
		if (ioctl(ctl(), VRHP_IOC_HP_CONFIG, &c) || c.outcome != VRHP_OUT_SUCCESS)
			refused++;
	}
	printf("{\"scenario\": \"flood\", \"calls\": %" PRIu64 ", \"refused\": %" PRIu64
	       ", \"ms\": %.1f}\n", n, refused, now_ms() - t0);
	return 0;
}

/* FILL asking for 2^32 keys: refused before any work. */
static int fill_cap(void)
{
	struct vrhp_fill f = { .table = VRHP_TABLE_FLOW, .count = 1ULL << 32, .seed = 1 };

	printf("{\"scenario\": \"fill-cap\", ");
	timed("fill", VRHP_IOC_FILL, &f, 1);
	printf(", \"inserted\": %" PRIu64 "}\n", (uint64_t)f.inserted);
	return 0;
}

int main(int argc, char **argv)
{
	const char *s;

	if (argc < 3) {
		fprintf(stderr, "usage: vrhp_hostile DIR SCENARIO [ARGS]\n");
		return 2;
	}
	dir = argv[1];
	s = argv[2];
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(s, "alias") && argc == 5)
		return alias(parse_size(argv[3]), (uint32_t)atoi(argv[4]));
	if (!strcmp(s, "cross") && argc == 4)
		return cross(parse_size(argv[3]));
	if ((!strcmp(s, "private") || !strcmp(s, "wrong-path") || !strcmp(s, "wrong-offset")) &&
	    argc == 4)
		return not_the_file(s, parse_size(argv[3]));
	if (!strcmp(s, "anon-huge"))
		return anon_huge();
	if (!strcmp(s, "reset-refused"))
		return reset_refused();
	if (!strcmp(s, "churn") && argc == 5)
		return churn((uint32_t)atoi(argv[3]), (uint32_t)atoi(argv[4]));
	if (!strcmp(s, "cycle") && argc == 4)
		return cycle(argv[3]);
	if (!strcmp(s, "lockorder") && argc == 6)
		return lockorder(parse_size(argv[3]), strtoull(argv[4], NULL, 0),
				 strtoull(argv[5], NULL, 0));
	if (!strcmp(s, "flood") && argc == 4)
		return flood(strtoull(argv[3], NULL, 0));
	if (!strcmp(s, "fill-cap"))
		return fill_cap();
	fprintf(stderr, "vrhp_hostile: unknown scenario or arguments: %s\n", s);
	return 2;
}
