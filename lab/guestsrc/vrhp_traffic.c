// SPDX-License-Identifier: GPL-2.0
/*
 * vrhp_traffic - flow churn against the vrhp module while it may be swapped.
 *
 *   vrhp_traffic ACKED_FILE SEED
 *
 * Adds, looks up and deletes flows through /dev/vrhp until SIGTERM. An operation counts
 * as acknowledged only when its ioctl returned 0. /dev/vrhp is held for one batch at a
 * time, so the module can be removed between batches. A failure to open it, or ENODEV
 * (the new module has no tables yet), opens an unavailability window that the next
 * acknowledged operation closes. A flow it added and did not delete that GET or DEL does
 * not find is counted as lost at that call. On SIGTERM it writes the flows it added and did not
 * delete to ACKED_FILE, one key per line in the form `vrhp-agent dump` prints them, and
 * one JSON summary to stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "vrhp_uapi.h"

#define BATCH 64
#define MAX_WINDOWS 64
#define MAX_LIVE (1u << 20)

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t rng_state;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* Flow number n as a key: 198.18.0.0/15 benchmark addresses, unique per n. */
static void key_of(uint32_t vrf, uint64_t n, struct vrhp_flow_key *k)
{
	uint32_t src = htonl(0xC6120000u | (uint32_t)(n >> 16)), dst = htonl(0xC6130001u);

	memset(k, 0, sizeof(*k));
	k->vrf = vrf;
	k->family = VRHP_AF_INET;
	memcpy(k->src, &src, 4);
	memcpy(k->dst, &dst, 4);
	k->proto = 17;
	k->sport = (uint16_t)n;
	k->dport = 4789;
}

struct counts {
	uint64_t adds, dels, gets, get_misses, del_misses, errors, first_error;
	uint64_t attempts_unavailable;
	double window_start;
	double windows[MAX_WINDOWS];
	uint64_t adds_before[MAX_WINDOWS];	/* adds acknowledged when each window opened */
	unsigned int nwindows;
};

/* open: the module is gone; an ioctl: the new module has no tables yet */
static int unavailable_open(int e)
{
	return e == ENOENT || e == ENODEV || e == ENXIO;
}

static void opened_window(struct counts *c)
{
	if (c->window_start == 0) {
		c->window_start = now_ms();
		if (c->nwindows < MAX_WINDOWS)
			c->adds_before[c->nwindows] = c->adds;
	}
	c->attempts_unavailable++;
}

static void closed_window(struct counts *c)
{
	if (c->window_start == 0)
		return;
	if (c->nwindows < MAX_WINDOWS)
		c->windows[c->nwindows++] = now_ms() - c->window_start;
	c->window_start = 0;
}

int main(int argc, char **argv)
{
	static uint64_t live[MAX_LIVE];
	struct counts c;
	struct sigaction sa;
	uint64_t nlive = 0, next = 0, i;
	uint32_t vrf;
	FILE *acked;
	unsigned int w;

	if (argc != 3) {
		fprintf(stderr, "usage: vrhp_traffic ACKED_FILE SEED\n");
		return 1;
	}
	rng_state = strtoull(argv[2], NULL, 0) * 0x9E3779B97F4A7C15ull | 1;
	vrf = 4000 + (uint32_t)(rng_state % 1000);
	memset(&c, 0, sizeof(c));
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	while (!stop) {
		struct timespec pause = { 0, 1000000 };
		int fd = open("/dev/vrhp", O_RDWR | O_CLOEXEC), b;

		if (fd < 0) {
			if (!unavailable_open(errno)) {
				fprintf(stderr, "vrhp_traffic: /dev/vrhp: %s\n", strerror(errno));
				return 1;
			}
			opened_window(&c);
			nanosleep(&pause, NULL);
			continue;
		}
		for (b = 0; b < BATCH && !stop; b++) {
			struct vrhp_flow_req r;
			uint64_t roll = rnd() % 4, pick = 0, n;
			unsigned long cmd;

			memset(&r, 0, sizeof(r));
			if (roll < 2 || nlive == 0) {
				if (nlive == MAX_LIVE)
					break;
				n = next;
				cmd = VRHP_IOC_FLOW_ADD;
				r.action = 1;
			} else {
				pick = rnd() % nlive;
				n = live[pick];
				cmd = roll == 2 ? VRHP_IOC_FLOW_DEL : VRHP_IOC_FLOW_GET;
			}
			key_of(vrf, n, &r.key);
			if (ioctl(fd, cmd, &r)) {
				int e = errno;

				if (e == ENODEV) {
					opened_window(&c);
					break;
				}
				if (cmd == VRHP_IOC_FLOW_GET && e == ENOENT) {
					c.get_misses++;
					continue;
				}
				if (cmd == VRHP_IOC_FLOW_DEL && e == ENOENT) {
					live[pick] = live[--nlive];	/* gone already */
					c.del_misses++;
					continue;
				}
				if (!c.errors++)
					c.first_error = e;
				continue;
			}
			closed_window(&c);
			if (cmd == VRHP_IOC_FLOW_ADD) {
				live[nlive++] = n;
				next++;
				c.adds++;
			} else if (cmd == VRHP_IOC_FLOW_DEL) {
				live[pick] = live[--nlive];
				c.dels++;
			} else {
				c.gets++;
			}
		}
		close(fd);
		nanosleep(&pause, NULL);
	}
	acked = fopen(argv[1], "w");
	if (!acked) {
		fprintf(stderr, "vrhp_traffic: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	for (i = 0; i < nlive; i++) {
		struct vrhp_flow_key k;
		char s[INET_ADDRSTRLEN], d[INET_ADDRSTRLEN];

		key_of(vrf, live[i], &k);
		inet_ntop(AF_INET, k.src, s, sizeof(s));
		inet_ntop(AF_INET, k.dst, d, sizeof(d));
		fprintf(acked, "\"vrf\":%u,\"family\":%u,\"src\":\"%s\",\"dst\":\"%s\",\"proto\":%u,"
			"\"sport\":%u,\"dport\":%u\n",
			k.vrf, k.family, s, d, k.proto, k.sport, k.dport);
	}
	if (fclose(acked)) {
		fprintf(stderr, "vrhp_traffic: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	printf("{\"adds\":%" PRIu64 ",\"dels\":%" PRIu64 ",\"gets\":%" PRIu64
	       ",\"get_misses\":%" PRIu64 ",\"del_misses\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"first_error\":%" PRIu64
	       ",\"live\":%" PRIu64 ",\"attempts_unavailable\":%" PRIu64
	       ",\"still_unavailable\":%s,\"unavailable_ms\":[",
	       c.adds, c.dels, c.gets, c.get_misses, c.del_misses, c.errors, c.first_error, nlive,
	       c.attempts_unavailable, c.window_start ? "true" : "false");
	for (w = 0; w < c.nwindows; w++)
		printf("%s%.3f", w ? "," : "", c.windows[w]);
	printf("],\"adds_before_window\":[");
	for (w = 0; w < c.nwindows; w++)
		printf("%s%" PRIu64, w ? "," : "", c.adds_before[w]);
	printf("]}\n");
	return 0;
}
