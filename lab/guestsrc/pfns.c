/* Print the physical frame of each huge page of a hugetlbfs file, read as root from
 * /proc/self/pagemap of a read-only shared mapping: which pages back the file.
 * Usage: pfns FILE PAGE_SIZE. Prints {"pfns": [...]}. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PFN_MASK ((1ull << 55) - 1)
#define PRESENT (1ull << 63)

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: pfns FILE PAGE_SIZE\n");
		return 2;
	}
	unsigned long long page = strtoull(argv[2], NULL, 0);
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		fprintf(stderr, "pfns: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (page < 4096 || st.st_size <= 0 || st.st_size % page) {
		fprintf(stderr, "pfns: %s: size %lld is not a multiple of the page size %llu\n",
			argv[1], (long long)st.st_size, page);
		return 1;
	}
	volatile unsigned char *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	int pm = open("/proc/self/pagemap", O_RDONLY);
	if (p == MAP_FAILED || pm < 0) {
		fprintf(stderr, "pfns: map %s or open pagemap: %s\n", argv[1], strerror(errno));
		return 1;
	}
	printf("{\"pfns\": [");
	for (unsigned long long off = 0; off < (unsigned long long)st.st_size; off += page) {
		uint64_t entry;
		uintptr_t va = (uintptr_t)(p + off);
		(void)p[off];
		if (pread(pm, &entry, sizeof(entry), (off_t)(va / 4096 * 8)) != sizeof(entry) ||
		    !(entry & PRESENT) || !(entry & PFN_MASK)) {
			fprintf(stderr, "pfns: %s +%llu: no frame in pagemap (not root?)\n",
				argv[1], off);
			return 1;
		}
		printf("%s%llu", off ? ", " : "", (unsigned long long)(entry & PFN_MASK));
	}
	printf("]}\n");
	return 0;
}
