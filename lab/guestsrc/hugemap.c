/* Map a hugetlbfs file and report where it landed: proves the guest's pool works. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: hugemap FILE BYTES\n");
		return 2;
	}
	char *end;
	unsigned long long len = strtoull(argv[2], &end, 0);
	if (*end || len == 0) {
		fprintf(stderr, "hugemap: BYTES must be a positive number, got '%s'\n", argv[2]);
		return 2;
	}
	int fd = open(argv[1], O_CREAT | O_RDWR, 0600);
	if (fd < 0) {
		fprintf(stderr, "hugemap: open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (ftruncate(fd, (off_t)len)) {
		fprintf(stderr, "hugemap: ftruncate %s to %llu: %s\n", argv[1], len, strerror(errno));
		return 1;
	}
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "hugemap: mmap %s (%llu bytes): %s\n", argv[1], len, strerror(errno));
		return 1;
	}
	/* Touch one byte per 4 KiB to prove the whole range is backed. */
	for (unsigned long long off = 0; off < len; off += 4096)
		p[off] = (unsigned char)(off >> 12);
	unsigned long long bad = 0;
	for (unsigned long long off = 0; off < len; off += 4096)
		bad += p[off] != (unsigned char)(off >> 12);
	printf("{\"address\": %llu, \"length\": %llu, \"mismatches\": %llu}\n",
	       (unsigned long long)(uintptr_t)p, len, bad);
	munmap(p, len);
	close(fd);
	return bad ? 1 : 0;
}
