// SPDX-License-Identifier: GPL-2.0
/*
 * hplab_allocprobe: measure whether high-order page allocations succeed.
 *
 * Interface (documented in lab/stress.py as well):
 *   insmod hplab_allocprobe.ko order=10 count=64 gfp=kernel tag=before
 *
 *   order  page order to allocate, 0..max buddy order of the kernel (default 10)
 *   count  number of allocations attempted, 1..1024 (default 64); all successful
 *          ones are held at the same time, then all are freed
 *   gfp    atomic        GFP_ATOMIC (no reclaim, no compaction)
 *          kernel        GFP_KERNEL (reclaim + compaction)
 *          noretry       GFP_KERNEL | __GFP_NORETRY
 *          retry_mayfail GFP_KERNEL | __GFP_RETRY_MAYFAIL
 *          __GFP_NOWARN is always added so failures do not flood the log.
 *   tag    free text [A-Za-z0-9_.-]{0,32} echoed in the result, to find the line
 *
 * The work happens in module init, which then returns -ECANCELED on purpose, so
 * the module never stays loaded and nothing has to be unloaded: insmod reports
 * "Operation canceled" (exit status 1) and the result is ONE kernel log line:
 *
 *   hplab_allocprobe: {"tag":"before","order":10,"count":64,"gfp":"kernel",
 *                      "succeeded":1,"failed":63,"zones":{"DMA":1},"elapsed_us":1234}
 *
 * (on one line). Invalid parameters return -EINVAL before any allocation and log
 * "hplab_allocprobe: error: ..." instead of a JSON line.
 */
#include <linux/ctype.h>
#include <linux/errno.h>
#include <linux/gfp.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/version.h>

#define PROBE_MAX_COUNT 1024
#define PROBE_MAX_TAG 32

#if defined(MAX_PAGE_ORDER)
#define PROBE_MAX_ORDER MAX_PAGE_ORDER /* 6.8+: inclusive */
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define PROBE_MAX_ORDER MAX_ORDER /* 6.4-6.7: inclusive */
#else
#define PROBE_MAX_ORDER (MAX_ORDER - 1) /* up to 6.3: exclusive */
#endif

static int order = 10;
module_param(order, int, 0444);
MODULE_PARM_DESC(order, "page order of each allocation");

static int count = 64;
module_param(count, int, 0444);
MODULE_PARM_DESC(count, "number of allocations attempted (held together)");

static char *gfp = "kernel";
module_param(gfp, charp, 0444);
MODULE_PARM_DESC(gfp, "atomic|kernel|noretry|retry_mayfail");

static char *tag = "";
module_param(tag, charp, 0444);
MODULE_PARM_DESC(tag, "label echoed in the result line");

static bool tag_ok(const char *s)
{
	size_t n = 0;

	for (; *s; s++, n++) {
		if (n >= PROBE_MAX_TAG)
			return false;
		if (!(isalnum(*s) || *s == '_' || *s == '-' || *s == '.'))
			return false;
	}
	return true;
}

static int parse_gfp(const char *name, gfp_t *flags)
{
	if (!strcmp(name, "atomic"))
		*flags = GFP_ATOMIC;
	else if (!strcmp(name, "kernel"))
		*flags = GFP_KERNEL;
	else if (!strcmp(name, "noretry"))
		*flags = GFP_KERNEL | __GFP_NORETRY;
	else if (!strcmp(name, "retry_mayfail"))
		*flags = GFP_KERNEL | __GFP_RETRY_MAYFAIL;
	else
		return -EINVAL;
	*flags |= __GFP_NOWARN;
	return 0;
}

static int __init hplab_allocprobe_init(void)
{
	struct page **pages;
	unsigned int per_zone[MAX_NR_ZONES] = { 0 };
	const char *zone_name[MAX_NR_ZONES] = { NULL };
	char *line, *p, *end;
	const size_t line_size = 512;
	int succeeded = 0, i, z;
	bool first_zone = true;
	gfp_t flags;
	ktime_t start;
	s64 elapsed_us;

	if (order < 0 || order > PROBE_MAX_ORDER) {
		pr_err("hplab_allocprobe: error: order=%d outside 0..%d\n", order,
		       PROBE_MAX_ORDER);
		return -EINVAL;
	}
	if (count < 1 || count > PROBE_MAX_COUNT) {
		pr_err("hplab_allocprobe: error: count=%d outside 1..%d\n", count,
		       PROBE_MAX_COUNT);
		return -EINVAL;
	}
	if (!gfp || parse_gfp(gfp, &flags)) {
		pr_err("hplab_allocprobe: error: gfp must be atomic|kernel|noretry|retry_mayfail\n");
		return -EINVAL;
	}
	if (!tag)
		tag = "";
	if (!tag_ok(tag)) {
		pr_err("hplab_allocprobe: error: tag must match [A-Za-z0-9_.-]{0,%d}\n",
		       PROBE_MAX_TAG);
		return -EINVAL;
	}

	pages = kcalloc(count, sizeof(*pages), GFP_KERNEL);
	line = kzalloc(line_size, GFP_KERNEL);
	if (!pages || !line) {
		kfree(pages);
		kfree(line);
		pr_err("hplab_allocprobe: error: out of memory for bookkeeping\n");
		return -ENOMEM;
	}

	start = ktime_get();
	for (i = 0; i < count; i++) {
		pages[i] = alloc_pages(flags, order);
		if (pages[i]) {
			succeeded++;
			z = page_zonenum(pages[i]);
			per_zone[z]++;
			zone_name[z] = page_zone(pages[i])->name;
		}
	}
	elapsed_us = ktime_us_delta(ktime_get(), start);
	for (i = 0; i < count; i++)
		if (pages[i])
			__free_pages(pages[i], order);
	kfree(pages);

	p = line;
	end = line + line_size;
	p += scnprintf(p, end - p,
		       "{\"tag\":\"%s\",\"order\":%d,\"count\":%d,\"gfp\":\"%s\","
		       "\"succeeded\":%d,\"failed\":%d,\"zones\":{",
		       tag, order, count, gfp, succeeded, count - succeeded);
	for (z = 0; z < MAX_NR_ZONES; z++) {
		if (!per_zone[z])
			continue;
		p += scnprintf(p, end - p, "%s\"%s\":%u", first_zone ? "" : ",",
			       zone_name[z],
			       per_zone[z]);
		first_zone = false;
	}
	scnprintf(p, end - p, "},\"elapsed_us\":%lld}", elapsed_us);
	pr_info("hplab_allocprobe: %s\n", line);
	kfree(line);

	/* Never stay loaded: the result is the log line above. */
	return -ECANCELED;
}

static void __exit hplab_allocprobe_exit(void)
{
}

module_init(hplab_allocprobe_init);
module_exit(hplab_allocprobe_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("hplab");
MODULE_DESCRIPTION("hplab: probe whether high-order page allocations succeed");
