/* Privilege check of vrhp: opens the devices as root, drops to nobody (65534), then calls
 * every control ioctl and tries writable mappings. Prints one JSON object. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vrhp_uapi.h"  /* -I kmod/include */

#define NOBODY 65534

static const struct { const char *name; unsigned long cmd; } CMDS[] = {
	{"INFO", VRHP_IOC_INFO}, {"HP_CONFIG", VRHP_IOC_HP_CONFIG},
	{"FLOW_ADD", VRHP_IOC_FLOW_ADD}, {"FLOW_DEL", VRHP_IOC_FLOW_DEL},
	{"FLOW_GET", VRHP_IOC_FLOW_GET}, {"BRIDGE_ADD", VRHP_IOC_BRIDGE_ADD},
	{"BRIDGE_DEL", VRHP_IOC_BRIDGE_DEL}, {"BRIDGE_GET", VRHP_IOC_BRIDGE_GET},
	{"FILL", VRHP_IOC_FILL}, {"STATS", VRHP_IOC_STATS}, {"PATTERN", VRHP_IOC_PATTERN},
};

static int err_of(long rc) { return rc < 0 ? errno : 0; }

static const char *map_err(int fd, int prot, int flags)
{
	void *p = mmap(NULL, 4096, prot, flags, fd, 0);
	if (p == MAP_FAILED)
		return strerrorname_np(errno) ? strerrorname_np(errno) : "E?";
	munmap(p, 4096);
	return "OK";
}

int main(void)
{
	static unsigned char buf[1 << 16];
	int ctl = open("/dev/vrhp", O_RDWR);
	int flow = open("/dev/vrhp_flow", O_RDONLY);
	if (ctl < 0 || flow < 0) {
		printf("{\"error\": \"open as root: %s\"}\n", strerror(errno));
		return 2;
	}
	memset(buf, 0, sizeof(buf));
	int root_info = err_of(ioctl(ctl, VRHP_IOC_INFO, buf));
	if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY)) {
		printf("{\"error\": \"drop to %d: %s\"}\n", NOBODY, strerror(errno));
		return 2;
	}
	printf("{\"uid\": %d, \"root_info_errno\": %d, \"ioctls\": {", (int)getuid(), root_info);
	for (size_t i = 0; i < sizeof(CMDS) / sizeof(CMDS[0]); i++) {
		memset(buf, 0, sizeof(buf));
		int e = err_of(ioctl(ctl, CMDS[i].cmd, buf));
		printf("%s\"%s\": \"%s\"", i ? ", " : "", CMDS[i].name,
		       e ? strerrorname_np(e) : "OK");
	}
	int reopen = open("/dev/vrhp", O_RDWR);
	int reopen_flow = open("/dev/vrhp_flow", O_RDONLY);
	printf("}, \"open_ctl\": \"%s\",", reopen < 0 ? strerrorname_np(errno) : "OK");
	printf(" \"open_flow\": \"%s\",", reopen_flow < 0 ? strerrorname_np(errno) : "OK");
	printf(" \"mmap_private_write\": \"%s\",",
	       map_err(flow, PROT_READ | PROT_WRITE, MAP_PRIVATE));
	printf(" \"mmap_shared_write\": \"%s\",",
	       map_err(flow, PROT_READ | PROT_WRITE, MAP_SHARED));
	printf(" \"mmap_shared_read\": \"%s\"}\n", map_err(flow, PROT_READ, MAP_SHARED));
	return 0;
}
