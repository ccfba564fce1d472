/* Seeded ioctl fuzzer for /dev/vrhp: random and real commands, random sizes, NULL,
 * unaligned, kernel and unmapped pointers, huge-page configs of plain anonymous memory,
 * overlapping and duplicate segments; PROCS processes at once. With HUGEFILE (a file on
 * a 1 GiB hugetlbfs), a third of the configs are valid or nearly valid ones of that
 * file, so real huge pages are pinned and released along the way.
 * Usage: vrhp_fuzz SEED CALLS PROCS [HUGEFILE]. Prints one JSON object per process. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vrhp_uapi.h"  /* -I kmod/include */

static const unsigned long CMDS[] = {
	VRHP_IOC_INFO, VRHP_IOC_HP_CONFIG, VRHP_IOC_FLOW_ADD, VRHP_IOC_FLOW_DEL,
	VRHP_IOC_FLOW_GET, VRHP_IOC_BRIDGE_ADD, VRHP_IOC_BRIDGE_DEL, VRHP_IOC_BRIDGE_GET,
	VRHP_IOC_FILL, VRHP_IOC_STATS, VRHP_IOC_PATTERN,
};
#define NCMDS (sizeof(CMDS) / sizeof(CMDS[0]))
#define ANON_BYTES (8u << 20)
#define HUGE_BYTES (1ull << 30)

struct huge {
	unsigned char *base;		/* NULL: no HUGEFILE */
	const char *path;
	uint64_t file_bytes[VRHP_NR_TABLES];
};

static uint64_t state;
static uint64_t rnd(void)
{
	state ^= state << 13; state ^= state >> 7; state ^= state << 17;
	return state;
}

static uint64_t round_4k(uint64_t n)
{
	return (n + 4095) & ~4095ull;
}

/* Both tables in the one file, as the agent lays them out; one field off at times. */
static void file_config(struct vrhp_hp_config *c, const struct huge *h)
{
	uint64_t off = 0;

	memset(c, 0, sizeof(*c));
	c->nr_segs = VRHP_NR_TABLES;
	c->flags = rnd() % 2 ? VRHP_CFG_RESET : 0;
	for (unsigned t = 0; t < VRHP_NR_TABLES; t++) {
		struct vrhp_segment *s = &c->segs[t];

		s->uaddr = (uint64_t)(uintptr_t)h->base + off;
		s->len = round_4k(h->file_bytes[t]);
		s->page_size = VRHP_PAGE_1G;
		s->table = t;
		s->offset = off;
		snprintf(s->path, sizeof(s->path), "%s", h->path);
		off += s->len;
	}
	switch (rnd() % 8) {
	case 0: c->segs[1].uaddr = c->segs[0].uaddr; break;	/* both tables on one range */
	case 1: c->segs[0].len += 4096; break;			/* into the bridge table */
	case 2: c->segs[1].offset += 4096; break;		/* another offset */
	case 3: c->segs[0].page_size = VRHP_PAGE_2M; break;
	default: break;						/* valid */
	}
}

static void fill_config(struct vrhp_hp_config *c, unsigned char *anon, const struct huge *h)
{
	if (h->base && rnd() % 3 == 0) {
		file_config(c, h);
		return;
	}
	memset(c, 0, sizeof(*c));
	c->nr_segs = rnd() % 6;			/* 5 is over the limit */
	c->flags = rnd() % 4 == 0 ? VRHP_CFG_RESET : (uint32_t)(rnd() % 3);
	for (unsigned i = 0; i < VRHP_MAX_SEGS; i++) {
		struct vrhp_segment *s = &c->segs[i];
		switch (rnd() % 6) {
		case 0: s->uaddr = (uint64_t)(uintptr_t)anon; break;		/* not hugetlb */
		case 1: s->uaddr = (uint64_t)(uintptr_t)anon + 1 + rnd() % 4095; break;
		case 2: s->uaddr = 0xffff888000000000ull + (rnd() % 64) * 4096; break;
		case 3: s->uaddr = i ? c->segs[0].uaddr : 0; break;		/* duplicate */
		case 4: s->uaddr = (uint64_t)(uintptr_t)anon + 4096 * (rnd() % 16); break;
		default: s->uaddr = rnd(); break;
		}
		uint64_t lens[] = {0, 4096, ANON_BYTES, 1ull << 30, 2ull << 30, rnd(), ~0ull};
		s->len = lens[rnd() % 7];
		uint64_t sizes[] = {VRHP_PAGE_1G, VRHP_PAGE_2M, 4096, 0, rnd()};
		s->page_size = sizes[rnd() % 5];
		s->table = rnd() % 4;
		s->flags = rnd() % 8 == 0 ? (uint32_t)rnd() : 0;
		for (unsigned k = 0; k < sizeof(s->path) - 1; k++)
			s->path[k] = rnd() % 16 == 0 ? 0 : (char)('a' + rnd() % 26);
		if (rnd() % 8 == 0)
			memset(s->path, 'x', sizeof(s->path));	/* not NUL terminated */
		s->offset = rnd() % 2 ? 0 : rnd();
	}
}

static int fuzz(int fd, unsigned long calls, unsigned char *anon, unsigned char *guard,
		const struct huge *h)
{
	static unsigned char buf[1 << 14] __attribute__((aligned(64)));
	unsigned long ok = 0, configured = 0, errs[256] = {0};
	for (unsigned long n = 0; n < calls; n++) {
		unsigned long cmd;
		unsigned r = rnd() % 10;
		if (r < 7)
			cmd = CMDS[rnd() % NCMDS];
		else if (r < 9)		/* a real number with a wrong size or direction */
			cmd = _IOC(rnd() % 4, VRHP_IOC_MAGIC, rnd() % 0x40, rnd() % 0x4000);
		else
			cmd = (unsigned long)rnd();
		for (size_t i = 0; i < sizeof(buf); i += 8) {
			uint64_t v = rnd() % 3 ? rnd() : (uint64_t)(uintptr_t)anon;
			memcpy(buf + i, &v, 8);
		}
		if (cmd == VRHP_IOC_HP_CONFIG && rnd() % 2)
			fill_config((struct vrhp_hp_config *)buf, anon, h);
		if (cmd == VRHP_IOC_FILL || cmd == VRHP_IOC_PATTERN) {
			struct vrhp_fill *f = (struct vrhp_fill *)buf;
			f->table = rnd() % 3;
			f->count = rnd() % 4096;	/* bounded work per call */
		}
		void *arg;
		switch (rnd() % 10) {
		case 0: arg = NULL; break;
		case 1: arg = buf + 1 + rnd() % 7; break;
		case 2: arg = (void *)(uintptr_t)(0xffffffff81000000ull + (rnd() % 4096) * 8); break;
		case 3: arg = guard - 8; break;			/* runs into a PROT_NONE page */
		case 4: arg = anon + rnd() % (ANON_BYTES - 4096); break;
		default: arg = buf; break;
		}
		if (ioctl(fd, cmd, arg) == 0) {
			ok++;
			if (cmd == VRHP_IOC_HP_CONFIG && arg == buf &&
			    ((struct vrhp_hp_config *)buf)->outcome == VRHP_OUT_SUCCESS)
				configured++;
		} else {
			errs[errno & 0xff]++;
		}
	}
	printf("{\"pid\": %d, \"calls\": %lu, \"ok\": %lu, \"configured\": %lu, "
	       "\"errno\": {", getpid(), calls, ok, configured);
	int first = 1;
	for (int e = 0; e < 256; e++)
		if (errs[e]) {
			printf("%s\"%s\": %lu", first ? "" : ", ",
			       strerrorname_np(e) ? strerrorname_np(e) : "E?", errs[e]);
			first = 0;
		}
	printf("}}\n");
	fflush(stdout);
	return 0;
}

/* `vrhp_fuzz hold TABLE SECONDS`: map a btable table device read-only and keep it mapped. */
static int hold(const char *table, unsigned seconds)
{
	char dev[64];
	snprintf(dev, sizeof(dev), "/dev/vrhp_%s", table);
	int fd = open(dev, O_RDONLY);
	if (fd < 0) {
		perror(dev);
		return 2;
	}
	void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	close(fd);	/* only the mapping keeps the table now */
	printf("{\"held\": \"%s\"}\n", dev);
	fflush(stdout);
	sleep(seconds);
	return *(volatile unsigned char *)p == 0xff ? 0 : 0;
}

/* Map 1 GiB of HUGEFILE shared, and learn the tables' sizes from the module. */
static int map_huge(int fd, const char *path, struct huge *h)
{
	struct vrhp_info inf;
	int hfd = open(path, O_CREAT | O_RDWR, 0600);

	if (hfd < 0 || ftruncate(hfd, HUGE_BYTES)) {
		perror(path);
		return -1;
	}
	h->base = mmap(NULL, HUGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, hfd, 0);
	close(hfd);
	if (h->base == MAP_FAILED) {
		perror("mmap HUGEFILE");
		return -1;
	}
	if (ioctl(fd, VRHP_IOC_INFO, &inf)) {
		perror("VRHP_IOC_INFO");
		return -1;
	}
	h->path = path;
	for (unsigned t = 0; t < VRHP_NR_TABLES; t++)
		h->file_bytes[t] = inf.tables[t].file_bytes;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "hold") == 0)
		return hold(argv[2], (unsigned)atoi(argv[3]));
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: %s SEED CALLS PROCS [HUGEFILE]\n", argv[0]);
		return 2;
	}
	uint64_t seed = strtoull(argv[1], NULL, 0);
	unsigned long calls = strtoul(argv[2], NULL, 0);
	int procs = atoi(argv[3]);
	int fd = open("/dev/vrhp", O_RDWR);
	if (fd < 0) {
		perror("/dev/vrhp");
		return 2;
	}
	unsigned char *anon = mmap(NULL, ANON_BYTES + 4096, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (anon == MAP_FAILED)
		return 2;
	memset(anon, 0x5a, ANON_BYTES);
	unsigned char *guard = anon + ANON_BYTES;
	mprotect(guard, 4096, PROT_NONE);
	struct huge h = {0};
	if (argc == 5 && map_huge(fd, argv[4], &h))
		return 2;
	for (int p = 0; p < procs; p++) {
		pid_t pid = fork();
		if (pid == 0) {
			state = seed * 0x9e3779b97f4a7c15ull + (uint64_t)p + 1;
			_exit(fuzz(fd, calls, anon, guard, &h));
		}
	}
	int status, bad = 0;
	while (wait(&status) > 0)
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			bad++;
	return bad ? 1 : 0;
}
