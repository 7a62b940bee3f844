/*
 * The in-guest runner: /init of the initramfs that hmmfuzz boots.
 *
 * It mounts the pseudo file systems, says hello to the host over a virtio-serial port
 * (kernel release and /proc/config.gz), then serves programs: for each one a fresh
 * process tree runs the ops in order, each op in the process the program names, and the
 * runner streams one result per op back to the host. It is C, static, and small because
 * a C fork costs ~3 ms under TCG where a Python one costs ~75 ms.
 *
 * Processes of a program share one MAP_SHARED control block with the coordinator (PID 1):
 * the coordinator posts a process's `go` semaphore with the op to run and waits on `done`.
 * Everything about the wire format lives in wire.h, shared with the host through cffi.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/mempolicy.h>
#include <linux/userfaultfd.h>

#include "kernel_ops.h"
#include "test_hmm_uapi.h"
#include "wire.h"

#ifndef WIRE_FINGERPRINT
#error "build with -DWIRE_FINGERPRINT=<fingerprint of wire.h> (harness/runner/build.py does)"
#endif

#define CONFIG_MAX (1 << 20)

#define ZRAM_SWAP_BYTES (256ULL << 20)

/* wire.h carries the kernel's MADV_* numbers; where the C library knows them too, they agree */
#define SAME_AS_LIBC(name) _Static_assert(name == W##name, #name)
#ifdef MADV_COLD
SAME_AS_LIBC(MADV_COLD);
#endif
#ifdef MADV_PAGEOUT
SAME_AS_LIBC(MADV_PAGEOUT);
#endif
#ifdef MADV_POPULATE_READ
SAME_AS_LIBC(MADV_POPULATE_READ);
SAME_AS_LIBC(MADV_POPULATE_WRITE);
#endif
#ifdef MADV_COLLAPSE
SAME_AS_LIBC(MADV_COLLAPSE);
#endif
SAME_AS_LIBC(MADV_WILLNEED);
SAME_AS_LIBC(MADV_DONTNEED);
SAME_AS_LIBC(MADV_FREE);
SAME_AS_LIBC(MADV_DONTFORK);
SAME_AS_LIBC(MADV_DOFORK);
SAME_AS_LIBC(MADV_MERGEABLE);
SAME_AS_LIBC(MADV_UNMERGEABLE);
SAME_AS_LIBC(MADV_HUGEPAGE);
SAME_AS_LIBC(MADV_NOHUGEPAGE);
SAME_AS_LIBC(MADV_WIPEONFORK);
SAME_AS_LIBC(MADV_KEEPONFORK);

struct control {
	sem_t go[WIRE_MAX_PROCS];
	sem_t done;
	int32_t op_index[WIRE_MAX_PROCS]; /* -1: exit */
	pid_t pid[WIRE_MAX_PROCS];
	struct wire_result result;
	struct wire_page pages[WIRE_MAX_OP_PAGES];
	uint8_t snapshot[WIRE_MAX_OP_PAGES];
	struct wire_pagemap pagemap[WIRE_MAX_OP_PAGES];
	int64_t values[WIRE_MAX_VALUES];
};

static int channel = -1;
static struct control *ctl;
static struct wire_op ops[WIRE_MAX_OPS];
static int device_fds[WIRE_MAX_FDS]; /* per process; fork copies it like the fd table */
static struct wire_region regions[WIRE_MAX_REGIONS];
static uint32_t nregions;
/* The objects behind `map ... memfd|file`, one per region and program: the coordinator
 * creates them before the first program process, so every process inherits them. */
static int memfds[WIRE_MAX_REGIONS];
static int files[WIRE_MAX_REGIONS];
static uint32_t op_timeout_ms;
/* The userfaultfd of the process running an op (an inherited one belongs to the parent's
 * mm, so a child makes its own): see own_uffd() */

/* ------------------------------------------------------------------ utilities */

static void say(const char *fmt, ...)
{
	va_list ap;
	char line[512];

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	dprintf(2, "hmmfuzz-runner: %s\n", line);
}

static void fatal(const char *fmt, ...)
{
	va_list ap;
	char line[512];

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	dprintf(2, "hmmfuzz-runner: fatal: %s (errno %d)\n", line, errno);
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

static void write_all(const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(channel, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			fatal("write to host channel");
		p += n;
		len -= n;
	}
}

static int read_all(void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(channel, p, len);

		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n == 0) {
			/* virtio-serial reads 0 while the host side is not connected yet */
			usleep(10000);
			continue;
		}
		if (n < 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

/* One frame: the header, then the parts of the payload in order (empty ones allowed). */
static void send_message(uint32_t type, const struct iovec *parts, int nparts)
{
	struct wire_frame frame = { .magic = WIRE_MAGIC, .type = type };

	for (int i = 0; i < nparts; i++)
		frame.length += parts[i].iov_len;
	write_all(&frame, sizeof(frame));
	for (int i = 0; i < nparts; i++)
		if (parts[i].iov_len)
			write_all(parts[i].iov_base, parts[i].iov_len);
}

#define PART(pointer, length) ((struct iovec){ .iov_base = (void *)(pointer), .iov_len = (length) })

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);

	if (fd < 0)
		return;
	if (write(fd, text, strlen(text)) < 0)
		say("write %s: %s", path, strerror(errno));
	close(fd);
}


/* zlib's CRC-32, so the host can check digests with zlib.crc32 */
static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc32_of(const uint8_t *p, size_t len)
{
	uint32_t c = 0xFFFFFFFFU;

	while (len--)
		c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFU;
}

static void digest_page(struct wire_page *page, const uint8_t *bytes)
{
	memset(page, 0, sizeof(*page));
	page->crc = crc32_of(bytes, PAGE_SIZE);
	memcpy(&page->first_word, bytes, sizeof(page->first_word));
	page->has_content = 1;
}

/* ------------------------------------------------------------------ boot */

static void mount_fs(const char *source, const char *target, const char *type)
{
	mkdir(target, 0755);
	if (mount(source, target, type, 0, NULL) && errno != EBUSY)
		say("mount %s on %s: %s", type, target, strerror(errno));
}

static void open_console(void)
{
	int fd = open("/dev/console", O_RDWR);

	if (fd < 0)
		return;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

/* The virtio-serial port the host named "hmmfuzz.0" (see harness/vm/qemu.py). */
static int open_channel(void)
{
	for (int attempt = 0; attempt < 500; attempt++) {
		DIR *dir = opendir("/sys/class/virtio-ports");
		struct dirent *entry;

		while (dir && (entry = readdir(dir))) {
			char path[300], name[WIRE_PORT_NAME_LEN] = "";
			int fd;
			ssize_t n;

			if (entry->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", entry->d_name);
			fd = open(path, O_RDONLY);
			if (fd < 0)
				continue;
			n = read(fd, name, sizeof(name) - 1);
			close(fd);
			if (n > 0 && strncmp(name, "hmmfuzz.0", 9) == 0) {
				snprintf(path, sizeof(path), "/dev/%s", entry->d_name);
				closedir(dir);
				fd = open(path, O_RDWR);
				if (fd < 0)
					fatal("open %s", path);
				return fd;
			}
		}
		if (dir)
			closedir(dir);
		usleep(10000);
	}
	fatal("no virtio-serial port named hmmfuzz.0 (CONFIG_VIRTIO_CONSOLE?)");
	return -1;
}

static size_t read_config(uint8_t *buf, size_t cap)
{
	int fd = open("/proc/config.gz", O_RDONLY);
	size_t len = 0;
	ssize_t n;

	if (fd < 0)
		return 0; /* CONFIG_IKCONFIG_PROC is off: the host says so */
	while (len < cap && (n = read(fd, buf + len, cap - len)) > 0)
		len += n;
	close(fd);
	return len;
}

static void send_hello(void)
{
	static uint8_t config[CONFIG_MAX];
	struct wire_hello hello = { .version = WIRE_VERSION, .fingerprint = WIRE_FINGERPRINT };
	struct utsname uts;
	size_t config_len = read_config(config, sizeof(config));

	uname(&uts);
	snprintf(hello.release, sizeof(hello.release), "%s", uts.release);
	snprintf(hello.machine, sizeof(hello.machine), "%.31s", uts.machine);
	for (int i = 0; i < 4; i++) {
		char path[64];

		snprintf(path, sizeof(path), "/dev/hmm_dmirror%d", i);
		if (access(path, R_OK | W_OK) == 0)
			hello.devices |= 1U << i;
	}
	struct iovec parts[] = { PART(&hello, sizeof(hello)), PART(config, config_len) };

	send_message(MSG_HELLO, parts, 2);
}

/* Swap on a zram disk, so that reclaim (MADV_PAGEOUT, memory pressure) can swap anonymous
 * and shmem pages out. mkswap by hand: a version-1 header in the first page. */
static void setup_swap(void)
{
	static uint8_t header[PAGE_SIZE];
	uint32_t info[3] = { 1, ZRAM_SWAP_BYTES / PAGE_SIZE - 1, 0 }; /* version, last_page, bad */
	int fd;

	write_file("/sys/block/zram0/disksize", "256M");
	fd = open("/dev/zram0", O_RDWR);
	if (fd < 0) {
		say("no zram swap: open /dev/zram0: %s", strerror(errno));
		return;
	}
	memcpy(header + 1024, info, sizeof(info));
	memcpy(header + PAGE_SIZE - 10, "SWAPSPACE2", 10);
	if (pwrite(fd, header, PAGE_SIZE, 0) != PAGE_SIZE)
		say("no zram swap: writing its header: %s", strerror(errno));
	fsync(fd);
	close(fd);
	if (swapon("/dev/zram0", 0))
		say("no zram swap: swapon: %s", strerror(errno));
}

/* System-wide settings ops may change, back to one fixed state before every program so
 * that nothing one program set leaks into the next: THP as harness/prog/ops.py's
 * THP_DEFAULT says (v1 programs model 4 KiB pages only: no THP unless a program asks for
 * it), KSM stopped with nothing left of the last program's merging: run=2 unmerges and
 * drops every rmap item, the slots of exited mms and all stable nodes
 * (unmerge_and_remove_all_rmap_items), so pages_shared/pages_sharing start from 0. */
static void reset_system_knobs(void)
{
	write_file("/sys/kernel/mm/transparent_hugepage/enabled", "never");
	write_file("/sys/kernel/mm/transparent_hugepage/defrag", "madvise");
	write_file("/sys/kernel/mm/ksm/run", "2");
}

/* khugepaged off for programs: it scans when its thread starts (THP going from never to
 * enabled) and then every scan_sleep_millisecs (10 s by default), collapsing whatever it
 * finds at a moment no op controls. A day between scans leaves only the start scan, which
 * the model knows about (reference/thp.py, set_mode). */
static void quiet_khugepaged(void)
{
	write_file("/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs",
		   "86400000");
	write_file("/sys/kernel/mm/transparent_hugepage/khugepaged/alloc_sleep_millisecs",
		   "86400000");
}

/*
 * The huge zero folio is allocated at the first read fault on a THP range and kept until a
 * shrinker frees it, so the first program to map it would seem to leak 512 pages (found by
 * a campaign: `thp always`, then a read of a 2 MiB-aligned range). The runner maps it at
 * boot and keeps it mapped (mm_get_huge_zero_folio holds it for the life of the mm), so it
 * exists before every program's memory baseline. MADV_DONTFORK: program processes do not
 * inherit the mapping.
 */
static void hold_huge_zero_page(void)
{
	const size_t huge = 2UL << 20;
	char *p = mmap(NULL, 2 * huge, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *aligned = (char *)(((uintptr_t)p + huge - 1) & ~(huge - 1));

	if (p == MAP_FAILED)
		return;
	write_file("/sys/kernel/mm/transparent_hugepage/enabled", "madvise");
	madvise(p, 2 * huge, MADV_DONTFORK);
	madvise(aligned, huge, MADV_HUGEPAGE);
	(void)*(volatile char *)aligned;
}

static void boot(void)
{
	mount_fs("devtmpfs", "/dev", "devtmpfs");
	open_console();
	mount_fs("proc", "/proc", "proc");
	mount_fs("sysfs", "/sys", "sysfs");
	mount_fs("debugfs", "/sys/kernel/debug", "debugfs");
	mount_fs("tmpfs", "/tmp", "tmpfs");
	/* No background compaction: it would move pages and invalidate device mirrors
	 * between ops, which the model would (rightly) not expect. */
	write_file("/proc/sys/vm/compaction_proactiveness", "0");
	quiet_khugepaged();
	hold_huge_zero_page();
	reset_system_knobs();
	setup_swap();
	crc_init();
	ctl = mmap(NULL, sizeof(*ctl), PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (ctl == MAP_FAILED)
		fatal("mmap control block");
	channel = open_channel();
}

/* ------------------------------------------------------------------ ops */

static void cpu_read(const struct wire_op *op, struct wire_result *res)
{
	static uint64_t copy[WORDS_PER_PAGE];

	for (uint64_t i = 0; i < op->npages; i++) {
		struct wire_page *page = &ctl->pages[i];

		int signal = guarded_load((const uint64_t *)(op->addr + i * PAGE_SIZE), copy);

		if (signal) {
			memset(page, 0, sizeof(*page));
			page->signal = signal;
		} else {
			digest_page(page, (const uint8_t *)copy);
		}
	}
	res->npages = op->npages;
}

static void cpu_write(const struct wire_op *op, struct wire_result *res)
{
	static uint64_t pattern[WORDS_PER_PAGE];

	for (uint64_t i = 0; i < op->npages; i++) {
		uint64_t addr = op->addr + i * PAGE_SIZE;
		struct wire_page *page = &ctl->pages[i];

		memset(page, 0, sizeof(*page));
		fill_pattern(pattern, op->arg, addr);
		page->signal = guarded_store((uint64_t *)addr, pattern);
	}
	res->npages = op->npages;
}

static int device_ioctl(const struct wire_op *op, unsigned long request,
			void *buffer, struct wire_result *res)
{
	struct hmm_dmirror_cmd cmd = {
		.addr = op->addr, .ptr = (uintptr_t)buffer,
		/* HMM_DMIRROR_FLAGS takes the flags in npages */
		.npages = op->kind == WOP_FLAGS ? op->arg : op->npages,
	};

	if (ioctl(device_fds[op->target], request, &cmd)) {
		res->err = errno;
		return -1;
	}
	res->has_cmd = 1;
	res->cpages = cmd.cpages;
	res->faults = cmd.faults;
	return 0;
}

static void device_op(const struct wire_op *op, struct wire_result *res)
{
	size_t len = (op->npages ? op->npages : 1) * PAGE_SIZE;
	uint8_t *buffer = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (buffer == MAP_FAILED) {
		res->err = errno;
		return;
	}
	switch (op->kind) {
	case WOP_DEV_READ:
	case WOP_EXCLUSIVE:
	case WOP_MIGRATE_TO_DEV:
		/* all three return the bytes the device read, one page per page of the range */
		if (device_ioctl(op, op->kind == WOP_DEV_READ ? HMM_DMIRROR_READ
				 : op->kind == WOP_EXCLUSIVE ? HMM_DMIRROR_EXCLUSIVE
				 : HMM_DMIRROR_MIGRATE_TO_DEV, buffer, res) == 0) {
			for (uint64_t i = 0; i < op->npages; i++)
				digest_page(&ctl->pages[i], buffer + i * PAGE_SIZE);
			res->npages = op->npages;
		}
		break;
	case WOP_DEV_WRITE:
		for (uint64_t i = 0; i < op->npages; i++)
			fill_pattern((uint64_t *)(buffer + i * PAGE_SIZE), op->arg,
				     op->addr + i * PAGE_SIZE);
		device_ioctl(op, HMM_DMIRROR_WRITE, buffer, res);
		break;
	case WOP_SNAPSHOT:
		if (device_ioctl(op, HMM_DMIRROR_SNAPSHOT, buffer, res) == 0) {
			memcpy(ctl->snapshot, buffer, op->npages);
			res->nsnapshot = op->npages;
		}
		break;
	case WOP_CHECK_EXCLUSIVE:
		device_ioctl(op, HMM_DMIRROR_CHECK_EXCLUSIVE, buffer, res);
		break;
	case WOP_MIGRATE_TO_SYS:
		device_ioctl(op, HMM_DMIRROR_MIGRATE_TO_SYS, buffer, res);
		break;
	case WOP_RELEASE:
		device_ioctl(op, HMM_DMIRROR_RELEASE, buffer, res);
		break;
	case WOP_FLAGS:
		device_ioctl(op, HMM_DMIRROR_FLAGS, buffer, res);
		break;
	}
	munmap(buffer, len);
}

static int prot_of(uint32_t wire_prot)
{
	switch (wire_prot) {
	case WPROT_R:
		return PROT_READ;
	case WPROT_RW:
		return PROT_READ | PROT_WRITE;
	default:
		return PROT_NONE;
	}
}

static void map_range(const struct wire_op *op, struct wire_result *res)
{
	size_t len = op->npages * PAGE_SIZE;
	int flags = MAP_FIXED_NOREPLACE, fd = -1;
	off_t offset = 0;
	void *p;

	switch (op->arg) {
	case WMAP_SHARED:
		flags |= MAP_SHARED | MAP_ANONYMOUS;
		break;
	case WMAP_MEMFD:
	case WMAP_FILE:
		/* page i of the region is page i of its object */
		flags |= op->arg == WMAP_MEMFD ? MAP_SHARED : MAP_PRIVATE;
		fd = op->arg == WMAP_MEMFD ? memfds[op->target] : files[op->target];
		offset = op->addr - regions[op->target].addr;
		break;
	default:
		flags |= MAP_PRIVATE | MAP_ANONYMOUS;
		break;
	}
	p = mmap((void *)op->addr, len, PROT_READ | PROT_WRITE, flags, fd, offset);
	if (p == MAP_FAILED) {
		res->err = errno;
	} else if ((uint64_t)p != op->addr) {
		/* a kernel without MAP_FIXED_NOREPLACE treats it as a hint */
		munmap(p, len);
		res->err = EEXIST;
	}
}

static void remap_range(const struct wire_op *op, struct wire_result *res)
{
	size_t len = op->npages * PAGE_SIZE, new_len = op->npages2 * PAGE_SIZE;
	void *p;

	if (op->arg & WMREMAP_MOVE)
		p = mremap((void *)op->addr, len, new_len, MREMAP_MAYMOVE | MREMAP_FIXED |
			   (op->arg & WMREMAP_DONTUNMAP ? MREMAP_DONTUNMAP : 0), (void *)op->addr2);
	else
		p = mremap((void *)op->addr, len, new_len, 0);
	if (p == MAP_FAILED)
		res->err = errno;
}

/* /proc/self/pagemap of the range; /proc/kpagecount and /proc/kpageflags of present PFNs */
static void read_pagemap(const struct wire_op *op, struct wire_result *res)
{
	static uint64_t entries[WIRE_MAX_OP_PAGES];
	size_t want = op->npages * sizeof(uint64_t);
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	int kpagecount = open("/proc/kpagecount", O_RDONLY);
	int kpageflags = open("/proc/kpageflags", O_RDONLY);
	ssize_t n;

	if (pagemap < 0) {
		res->err = errno;
		goto out;
	}
	n = pread(pagemap, entries, want, op->addr / PAGE_SIZE * sizeof(uint64_t));
	if (n < 0 || (size_t)n != want) {
		res->err = n < 0 ? errno : EIO;
		goto out;
	}
	for (uint64_t i = 0; i < op->npages; i++) {
		struct wire_pagemap *record = &ctl->pagemap[i];
		uint64_t pfn = entries[i] & ((1ULL << 55) - 1);

		memset(record, 0, sizeof(*record));
		record->entry = entries[i];
		if (!(entries[i] >> 63) || !pfn || kpagecount < 0 || kpageflags < 0)
			continue;
		if (pread(kpagecount, &record->count, 8, pfn * 8) == 8 &&
		    pread(kpageflags, &record->flags, 8, pfn * 8) == 8)
			record->has_page = 1;
	}
	res->npagemap = op->npages;
out:
	if (pagemap >= 0)
		close(pagemap);
	if (kpagecount >= 0)
		close(kpagecount);
	if (kpageflags >= 0)
		close(kpageflags);
}

static const char *const thp_enabled_names[] = {
	[WTHP_ALWAYS] = "always", [WTHP_MADVISE] = "madvise", [WTHP_NEVER] = "never",
};
static const char *const thp_defrag_names[] = {
	[WDEFRAG_ALWAYS] = "always", [WDEFRAG_DEFER] = "defer",
	[WDEFRAG_DEFER_MADVISE] = "defer+madvise", [WDEFRAG_MADVISE] = "madvise",
	[WDEFRAG_NEVER] = "never",
};
#define THP_ENABLED_OF(arg) ((arg) & 0xff)
#define THP_DEFRAG_OF(arg) ((arg) >> 8)

static void set_thp_op(const struct wire_op *op, struct wire_result *res)
{
	res->err = set_thp(thp_enabled_names[THP_ENABLED_OF(op->arg)],
			   thp_defrag_names[THP_DEFRAG_OF(op->arg)]);
}

/* move_pages(2): to a node, or (WIRE_NODE_QUERY) only where each page is */
static void move_pages_op(const struct wire_op *op, struct wire_result *res)
{
	static int status[WIRE_MAX_OP_PAGES];

	res->err = move_range(op->addr, op->npages, op->arg == WIRE_NODE_QUERY ? -1 : (int)op->arg,
			      status);
	for (uint64_t i = 0; i < op->npages; i++)
		ctl->values[i] = status[i];
	res->nvalues = op->npages;
	res->values_kind = WVAL_NODE_STATUS;
}

static void uffd_op(const struct wire_op *op, struct wire_result *res)
{
	enum uffd_request request = op->kind == WOP_UFFD_REGISTER ? UFFD_REGISTER_WP
		: op->kind == WOP_UFFD_UNREGISTER ? UFFD_UNREGISTER
		: op->arg ? UFFD_PROTECT : UFFD_UNPROTECT;

	res->err = uffd_range(request, op->addr, op->npages);
}

static void ksm_merge(struct wire_result *res)
{
	long budget = op_timeout_ms / 2 < KSM_MAX_WAIT_MS ? op_timeout_ms / 2 : KSM_MAX_WAIT_MS;
	int64_t scans;

	res->err = ksm_merge_scans(budget, &scans);
	ctl->values[WKSM_FULL_SCANS] = scans;
	ctl->values[WKSM_PAGES_SHARED] = read_number(KSM_DIR "pages_shared");
	ctl->values[WKSM_PAGES_SHARING] = read_number(KSM_DIR "pages_sharing");
	res->nvalues = WKSM_NVALUES;
	res->values_kind = WVAL_KSM;
}

static const char *const smaps_names[WSMAPS_NFIELDS] = {
	[WSMAPS_RSS] = "Rss", [WSMAPS_PSS] = "Pss", [WSMAPS_SHARED_CLEAN] = "Shared_Clean",
	[WSMAPS_SHARED_DIRTY] = "Shared_Dirty", [WSMAPS_PRIVATE_CLEAN] = "Private_Clean",
	[WSMAPS_PRIVATE_DIRTY] = "Private_Dirty", [WSMAPS_REFERENCED] = "Referenced",
	[WSMAPS_ANONYMOUS] = "Anonymous", [WSMAPS_ANON_HUGE_PAGES] = "AnonHugePages",
	[WSMAPS_SWAP] = "Swap", [WSMAPS_SWAP_PSS] = "SwapPss", [WSMAPS_LOCKED] = "Locked",
};
#define SMAPS_RECORD (2 + WSMAPS_NFIELDS)

/* A field line "Name:   <n> kB" into the record's slot for Name, if it has one */
static void smaps_field(int64_t *record, const char *line)
{
	const char *colon = strchr(line, ':');

	if (!colon)
		return;
	for (int f = 0; f < WSMAPS_NFIELDS; f++)
		if ((size_t)(colon - line) == strlen(smaps_names[f]) &&
		    strncmp(line, smaps_names[f], colon - line) == 0)
			record[2 + f] = strtoll(colon + 1, NULL, 10);
}

/* /proc/self/smaps of every VMA overlapping the range, one record per VMA */
static void read_smaps(const struct wire_op *op, struct wire_result *res)
{
	static char text[1 << 20];
	uint64_t end = op->addr + op->npages * PAGE_SIZE;
	int64_t *record = NULL;
	size_t len = 0;
	ssize_t n;
	int fd = open("/proc/self/smaps", O_RDONLY);

	if (fd < 0) {
		res->err = errno;
		return;
	}
	while (len < sizeof(text) - 1 && (n = read(fd, text + len, sizeof(text) - 1 - len)) > 0)
		len += n;
	close(fd);
	text[len] = 0;
	res->values_kind = WVAL_SMAPS;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		unsigned long long vma_start, vma_end;

		/* a VMA's first line starts with its lower-case hex bounds, a field's with a
		 * capital letter */
		if (line[0] >= 'A' && line[0] <= 'Z') {
			if (record)
				smaps_field(record, line);
			continue;
		}
		record = NULL;
		if (sscanf(line, "%llx-%llx", &vma_start, &vma_end) != 2 ||
		    vma_end <= op->addr || vma_start >= end)
			continue;
		if (res->nvalues + SMAPS_RECORD > WIRE_MAX_VALUES) {
			res->err = E2BIG;
			break;
		}
		record = &ctl->values[res->nvalues];
		res->nvalues += SMAPS_RECORD;
		record[0] = vma_start;
		record[1] = vma_end;
		for (int f = 0; f < WSMAPS_NFIELDS; f++)
			record[2 + f] = -1;
	}
}

static void run_op(const struct wire_op *op, struct wire_result *res)
{
	size_t len = op->npages * PAGE_SIZE;
	char path[64];
	int fd;

	switch (op->kind) {
	case WOP_MAP:
		map_range(op, res);
		break;
	case WOP_MREMAP:
		remap_range(op, res);
		break;
	case WOP_MADVISE:
		if (madvise((void *)op->addr, len, op->arg))
			res->err = errno;
		break;
	case WOP_MLOCK:
		if (mlock((void *)op->addr, len))
			res->err = errno;
		break;
	case WOP_MUNLOCK:
		if (munlock((void *)op->addr, len))
			res->err = errno;
		break;
	case WOP_PAGEMAP:
		read_pagemap(op, res);
		break;
	case WOP_THP:
		set_thp_op(op, res);
		break;
	case WOP_COMPACT:
		res->err = write_knob("/proc/sys/vm/compact_memory", "1");
		break;
	case WOP_CLEAR_SOFT_DIRTY:
		res->err = write_knob("/proc/self/clear_refs", "4");
		break;
	case WOP_MOVE_PAGES:
		move_pages_op(op, res);
		break;
	case WOP_MBIND:
		res->err = bind_range(op->addr, op->npages, op->arg);
		break;
	case WOP_UFFD_REGISTER:
	case WOP_UFFD_UNREGISTER:
	case WOP_UFFD_WP:
		uffd_op(op, res);
		break;
	case WOP_KSM_MERGE:
		ksm_merge(res);
		break;
	case WOP_SMAPS:
		read_smaps(op, res);
		break;
	case WOP_CLOSE:
		if (close(device_fds[op->target]))
			res->err = errno;
		device_fds[op->target] = -1;
		break;
	case WOP_MUNMAP:
		if (munmap((void *)op->addr, len))
			res->err = errno;
		break;
	case WOP_MPROTECT:
		if (mprotect((void *)op->addr, len, prot_of(op->arg)))
			res->err = errno;
		break;
	case WOP_WRITE:
		cpu_write(op, res);
		break;
	case WOP_READ:
		cpu_read(op, res);
		break;
	case WOP_OPEN:
		snprintf(path, sizeof(path), "/dev/hmm_dmirror%u", op->arg);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			res->err = errno;
		else
			device_fds[op->target] = fd;
		break;
	default:
		device_op(op, res);
		break;
	}
}

/* A program process: waits for its turn, runs one op, reports, again. */
static void serve_process(int me)
{
	catch_faults();
	for (;;) {
		const struct wire_op *op;
		int index;

		while (sem_wait(&ctl->go[me]) && errno == EINTR)
			;
		index = ctl->op_index[me];
		if (index < 0)
			_exit(0);
		op = &ops[index];
		if (op->kind == WOP_EXIT)
			_exit(0); /* the coordinator reports the op once the process is gone */
		memset(&ctl->result, 0, sizeof(ctl->result));
		ctl->result.op_index = index;
		if (op->kind == WOP_FORK) {
			pid_t pid = fork();

			if (pid == 0) {
				me = op->target;
				ctl->pid[me] = getpid();
				sem_post(&ctl->done);
				continue;
			}
			if (pid < 0) {
				ctl->result.err = errno;
				sem_post(&ctl->done);
			}
			/* on success the child posts `done` once it knows its own pid */
			continue;
		}
		run_op(op, &ctl->result);
		sem_post(&ctl->done);
	}
}

/* ------------------------------------------------------------------ memory counters */

/* Bring memory to a state two readings can be compared in: drop_caches=1 drains every
 * CPU's LRU batches (lru_add_drain_all), so the pages they held are freed, and drops
 * clean page cache. Frees the kernel defers further (RCU callbacks, per-CPU work) land
 * within the pauses of measure_memory. The slab shrinkers (drop_caches=2) and an explicit
 * RCU grace period (membarrier) are left out: they tripled the cost of a reading and did
 * not narrow the balance's spread (the host counts slab pages as held by the kernel). */
static void settle_memory(void)
{
	write_file("/proc/sys/vm/drop_caches", "1");
}

static char proc_text[1 << 16];

static const char *read_proc(const char *path)
{
	int fd = open(path, O_RDONLY);
	size_t len = 0;
	ssize_t n;

	proc_text[0] = 0;
	if (fd < 0)
		return proc_text;
	while (len < sizeof(proc_text) - 1 &&
	       (n = read(fd, proc_text + len, sizeof(proc_text) - 1 - len)) > 0)
		len += n;
	close(fd);
	proc_text[len] = 0;
	return proc_text;
}

/* The value of "name value" in /proc/vmstat's text, -1 if the kernel has no such counter */
static int64_t vmstat_value(const char *text, const char *name)
{
	size_t len = strlen(name);

	for (const char *line = text; line && *line; line = strchr(line, '\n')) {
		if (*line == '\n')
			line++;
		if (strncmp(line, name, len) == 0 && line[len] == ' ')
			return strtoll(line + len + 1, NULL, 10);
	}
	return -1;
}

static int64_t sum_after(const char *text, const char *key)
{
	int64_t sum = 0;
	size_t len = strlen(key);

	for (const char *at = strstr(text, key); at; at = strstr(at + len, key))
		sum += strtoll(at + len, NULL, 10);
	return sum;
}

static void read_vmstat(int64_t *counters)
{
	const char *vmstat = read_proc("/proc/vmstat");

	counters[WMEM_FREE] = vmstat_value(vmstat, "nr_free_pages");
	counters[WMEM_SLAB] = vmstat_value(vmstat, "nr_slab_reclaimable") +
			      vmstat_value(vmstat, "nr_slab_unreclaimable");
	counters[WMEM_PAGETABLES] = vmstat_value(vmstat, "nr_page_table_pages");
	counters[WMEM_KERNEL_STACK_KB] = vmstat_value(vmstat, "nr_kernel_stack");
	counters[WMEM_ZSPAGES] = vmstat_value(vmstat, "nr_zspages");
	counters[WMEM_MEMMAP] = vmstat_value(vmstat, "nr_memmap_pages");
	counters[WMEM_ANON] = vmstat_value(vmstat, "nr_anon_pages");
	counters[WMEM_FILE] = vmstat_value(vmstat, "nr_file_pages");
}

/* HMM_DMIRROR_RELEASE ioctls issued (each may remove device chunks). */
static int64_t releases_issued;

/* Chunks test_hmm added since the first memory reading ("added new ... chunk" in the
 * kernel log, dmirror_allocate_chunk), read from /dev/kmsg one new record at a time, so a
 * reading costs only the records logged since the last one. Records the log overwrote
 * before they were read (EPIPE) count as a change too. */
static int64_t chunks_added;

static void count_added_chunks(void)
{
	static int kmsg = -2;
	char record[1024];
	ssize_t n;

	if (kmsg == -2) {
		kmsg = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
		if (kmsg >= 0)
			lseek(kmsg, 0, SEEK_END);
	}
	while (kmsg >= 0) {
		n = read(kmsg, record, sizeof(record) - 1);
		if (n < 0 && errno == EPIPE) {
			chunks_added++;
			continue;
		}
		if (n <= 0)
			return;  /* EAGAIN: no record left */
		record[n] = 0;
		if (strstr(record, "added new "))
			chunks_added++;
	}
}

/* A number that changes whenever the test device adds or removes a chunk of device memory,
 * whose struct pages (the memmap) older kernels count nowhere: the chunks added plus the
 * RELEASE ioctls issued (dmirror_device_remove_chunks, the only removal). Both only grow.
 * (/proc/iomem would show device-private chunks only: a coherent chunk is RAM the guest
 * reserved.) */
static int64_t device_chunk_changes(void)
{
	count_added_chunks();
	return chunks_added + releases_issued;
}

/* Frees the kernel defers (RCU callbacks, per-CPU work) land some milliseconds after the
 * processes are gone: read /proc/vmstat until two readings a few milliseconds apart agree
 * on the free pages and the slab (or give up after MEMORY_READINGS and keep the last),
 * then the rest, which is slower to read (/proc/zoneinfo lists every CPU of every zone). */
#define MEMORY_READINGS 20
/* When the reading after a program looks like a leak, the host asks for a second one this
 * far apart (MSG_REMEASURE): something the kernel allocates for a moment (seen: ~280 pages
 * for some milliseconds, once in 200 programs) shows in one reading only, a leak in both.
 * Only on suspicion, because the pause and the reading cost every program ~30 ms of TCG. */
#define MEMORY_RECHECK_MS 20

static void measure_memory(int64_t *counters)
{
	struct timespec pause = { .tv_nsec = 5000000 };
	int64_t last_free = -1, last_slab = -1;

	for (int reading = 0; reading < MEMORY_READINGS; reading++) {
		settle_memory();
		read_vmstat(counters);
		if (counters[WMEM_FREE] == last_free && counters[WMEM_SLAB] == last_slab)
			break;
		last_free = counters[WMEM_FREE];
		last_slab = counters[WMEM_SLAB];
		nanosleep(&pause, NULL);
	}
	counters[WMEM_PCP] = sum_after(read_proc("/proc/zoneinfo"), "\n              count: ");
	counters[WMEM_DEVICE_CHUNKS] = device_chunk_changes();
	counters[WMEM_VMALLOC_KB] = sum_after(read_proc("/proc/meminfo"), "\nVmallocUsed:");
	counters[WMEM_PERCPU_KB] = sum_after(proc_text, "\nPercpu:");
}

/* ------------------------------------------------------------------ coordinator */

/* Wait for the op's `done`; returns DONE_COMPLETED, DONE_HUNG or DONE_DIED. */
static int wait_for_op(pid_t pid, uint32_t timeout_ms, int *sig)
{
	struct timespec start;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		struct timespec slice;

		clock_gettime(CLOCK_REALTIME, &slice);
		slice.tv_nsec += 50 * 1000000;
		if (slice.tv_nsec >= 1000000000) {
			slice.tv_sec++;
			slice.tv_nsec -= 1000000000;
		}
		if (sem_timedwait(&ctl->done, &slice) == 0)
			return DONE_COMPLETED;
		if (errno != ETIMEDOUT && errno != EINTR)
			fatal("sem_timedwait");
		if (process_gone(pid, sig))
			return DONE_DIED;
		if (elapsed_ms(&start) > timeout_ms)
			return DONE_HUNG;
	}
}

/* Wait until the process that runs an exit op is gone (a zombie: its mm and files are
 * released); returns DONE_COMPLETED or DONE_HUNG. */
static int wait_for_exit(pid_t pid, uint32_t timeout_ms)
{
	struct timespec start;
	int sig;

	clock_gettime(CLOCK_MONOTONIC, &start);
	while (!process_gone(pid, &sig)) {
		if (elapsed_ms(&start) > timeout_ms)
			return DONE_HUNG;
		usleep(500);
	}
	return DONE_COMPLETED;
}

/* Kill every process of the program and reap them all; 0 if that worked. */
static int end_processes(void)
{
	struct timespec start;
	int status;

	for (int p = 0; p < WIRE_MAX_PROCS; p++)
		if (ctl->pid[p] > 0)
			kill(ctl->pid[p], SIGKILL);
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		pid_t pid = waitpid(-1, &status, WNOHANG);

		if (pid < 0 && errno == ECHILD)
			return 0;
		if (pid == 0) {
			/* The same patience as for an op: an exiting process closes its dmirror
			 * fds, and each close evicts every device chunk (dmirror_fops_release),
			 * ~70 ms under TCG on a quiet host, seconds for several fds on a loaded
			 * one; a fixed 5 s limit called that a hang. */
			if (elapsed_ms(&start) > op_timeout_ms)
				return -1;
			usleep(1000);
		}
	}
}

/* Benchmark runs execute the program exactly as usual but report nothing per op: the
 * "raw C loop" that the harness's overhead is measured against. */
static int silent;
static uint32_t silent_status;

/* The memory counters of the program being run (done.measured says whether they were) */
static struct wire_done memory_done;
/* What the last measured program's teardown left: the next program's "before", as long as
 * nothing else ran in between (an executable, a provoked crash, a benchmark) */
static int64_t memory_baseline[WMEM_NCOUNTERS];
static int have_baseline;

static void send_done(uint32_t status, uint32_t ops_run, int32_t failed_op, int32_t detail)
{
	struct wire_done done = memory_done;

	done.status = status;
	done.ops_run = ops_run;
	done.failed_op = failed_op;
	done.detail = detail;
	memset(&memory_done, 0, sizeof(memory_done));

	if (silent) {
		silent_status = status;
		return;
	}
	send_message(MSG_DONE, &PART(&done, sizeof(done)), 1);
}

static void send_result(void)
{
	const struct wire_result *res = &ctl->result;

	if (silent)
		return;
	struct iovec parts[] = {
		PART(res, sizeof(*res)),
		PART(ctl->pages, res->npages * sizeof(struct wire_page)),
		PART(ctl->snapshot, res->nsnapshot),
		PART(ctl->pagemap, res->npagemap * sizeof(struct wire_pagemap)),
		PART(ctl->values, res->nvalues * sizeof(int64_t)),
	};

	send_message(MSG_RESULT, parts, 5);
}

static int valid_op(const struct wire_op *op)
{
	if (op->proc >= WIRE_MAX_PROCS || op->npages > WIRE_MAX_OP_PAGES ||
	    op->npages2 > WIRE_MAX_OP_PAGES)
		return 0;
	switch (op->kind) {
	case WOP_FORK:
		return op->target < WIRE_MAX_PROCS;
	case WOP_MAP:
		return op->target < nregions && op->arg <= WMAP_FILE;
	case WOP_OPEN:
	case WOP_CLOSE:
	case WOP_DEV_READ:
	case WOP_DEV_WRITE:
	case WOP_SNAPSHOT:
	case WOP_EXCLUSIVE:
	case WOP_CHECK_EXCLUSIVE:
	case WOP_MIGRATE_TO_DEV:
	case WOP_MIGRATE_TO_SYS:
	case WOP_RELEASE:
	case WOP_FLAGS:
		return op->target < WIRE_MAX_FDS;
	case WOP_MUNMAP:
	case WOP_MPROTECT:
	case WOP_WRITE:
	case WOP_READ:
	case WOP_EXIT:
	case WOP_MADVISE:
	case WOP_MREMAP:
	case WOP_MLOCK:
	case WOP_MUNLOCK:
	case WOP_PAGEMAP:
	case WOP_COMPACT:
	case WOP_CLEAR_SOFT_DIRTY:
	case WOP_MBIND:
	case WOP_UFFD_REGISTER:
	case WOP_UFFD_UNREGISTER:
	case WOP_UFFD_WP:
	case WOP_KSM_MERGE:
	case WOP_SMAPS:
		return 1;
	case WOP_MOVE_PAGES:
		return op->npages <= WIRE_MAX_VALUES;
	case WOP_THP:
		return THP_ENABLED_OF(op->arg) <= WTHP_NEVER &&
		       THP_DEFRAG_OF(op->arg) <= WDEFRAG_NEVER;
	default:
		return 0;
	}
}

static void create_backing(void)
{
	for (uint32_t r = 0; r < WIRE_MAX_REGIONS; r++) {
		off_t size = (off_t)regions[r].pages * PAGE_SIZE;
		char path[64];

		memfds[r] = files[r] = -1;
		if (r >= nregions)
			continue;
		if (regions[r].backing & WBACK_MEMFD) {
			memfds[r] = memfd_create("hmmfuzz", 0);
			if (memfds[r] < 0 || ftruncate(memfds[r], size))
				say("memfd for region %u: %s", r, strerror(errno));
		}
		if (regions[r].backing & WBACK_FILE) {
			snprintf(path, sizeof(path), "/tmp/hmmfuzz-region%u", r);
			files[r] = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
			if (files[r] < 0 || ftruncate(files[r], size))
				say("%s: %s", path, strerror(errno));
		}
	}
}

static void destroy_backing(void)
{
	for (uint32_t r = 0; r < WIRE_MAX_REGIONS; r++) {
		char path[64];

		if (memfds[r] >= 0)
			close(memfds[r]);
		if (files[r] >= 0) {
			close(files[r]);
			snprintf(path, sizeof(path), "/tmp/hmmfuzz-region%u", r);
			unlink(path);
		}
		memfds[r] = files[r] = -1;
	}
}

/* The second reading after a program (MSG_REMEASURE); it becomes the next baseline. */
static void remeasure(void)
{
	struct timespec recheck = { .tv_nsec = MEMORY_RECHECK_MS * 1000000L };

	nanosleep(&recheck, NULL);
	measure_memory(memory_baseline);
	have_baseline = 1;
	send_message(MSG_MEMORY, &PART(memory_baseline, sizeof(memory_baseline)), 1);
}

static void run_program(const struct wire_program *program)
{
	uint32_t i;
	int status = DONE_COMPLETED, sig = 0;
	pid_t first;
	char marker[96];

	snprintf(marker, sizeof(marker), "hmmfuzz: program %llu start\n",
		 (unsigned long long)program->serial);
	if (!silent)
		write_file("/dev/kmsg", marker);
	for (i = 0; i < program->nops; i++) {
		if (!valid_op(&ops[i])) {
			send_done(DONE_BAD_PROGRAM, 0, i, 0);
			return;
		}
	}
	reset_system_knobs();
	op_timeout_ms = program->op_timeout_ms;
	if (!silent && have_baseline)
		memcpy(memory_done.memory_before, memory_baseline, sizeof(memory_baseline));
	else if (!silent)
		measure_memory(memory_done.memory_before);
	have_baseline = 0;
	memset(ctl->pid, 0, sizeof(ctl->pid));
	for (int p = 0; p < WIRE_MAX_PROCS; p++)
		sem_init(&ctl->go[p], 1, 0);
	sem_init(&ctl->done, 1, 0);
	for (int f = 0; f < WIRE_MAX_FDS; f++)
		device_fds[f] = -1;
	create_backing();

	first = fork();
	if (first == 0) {
		/* All program processes on one CPU (children inherit it): per-CPU LRU batches
		 * then drain where the next op runs, so whether a write fault reuses or copies
		 * a page (wp_can_reuse_anon_folio) does not depend on scheduling. */
		cpu_set_t cpu0;

		CPU_ZERO(&cpu0);
		CPU_SET(0, &cpu0);
		sched_setaffinity(0, sizeof(cpu0), &cpu0);
		serve_process(0);
	}
	if (first < 0) {
		int err = errno;

		say("cannot fork the program's first process: %s", strerror(err));
		destroy_backing();
		send_done(DONE_NO_PROCESS, 0, 0, err);
		return;
	}
	ctl->pid[0] = first;

	for (i = 0; i < program->nops; i++) {
		const struct wire_op *op = &ops[i];

		ctl->op_index[op->proc] = i;
		if (op->kind == WOP_RELEASE)
			releases_issued++;
		sem_post(&ctl->go[op->proc]);
		if (op->kind == WOP_EXIT) {
			status = wait_for_exit(ctl->pid[op->proc], program->op_timeout_ms);
			if (status != DONE_COMPLETED)
				break;
			ctl->pid[op->proc] = 0; /* reaped or a zombie: nothing left to kill */
			memset(&ctl->result, 0, sizeof(ctl->result));
			ctl->result.op_index = i;
			send_result();
			continue;
		}
		status = wait_for_op(ctl->pid[op->proc], program->op_timeout_ms, &sig);
		if (status != DONE_COMPLETED)
			break;
		send_result();
	}
	if (status == DONE_HUNG)
		write_file("/proc/sysrq-trigger", "w"); /* blocked tasks' stacks to the console */
	if (end_processes() && status == DONE_COMPLETED)
		status = DONE_UNKILLABLE;
	destroy_backing();
	/* every process of the program is reaped: what it held should be back */
	if (!silent && (status == DONE_COMPLETED || status == DONE_DIED)) {
		reset_system_knobs();
		measure_memory(memory_done.memory_after);
		memory_done.measured = 1;
		memcpy(memory_baseline, memory_done.memory_after, sizeof(memory_baseline));
		have_baseline = 1;
	}
	snprintf(marker, sizeof(marker), "hmmfuzz: program %llu end\n",
		 (unsigned long long)program->serial);
	if (!silent)
		write_file("/dev/kmsg", marker);
	send_done(status, i, status == DONE_COMPLETED ? -1 : (int32_t)i, sig);
}

/*
 * Make the kernel misbehave on purpose through LKDTM, so the console oracle can be tested
 * on the real thing. A child does it: most crash types take the writing process down.
 */
static void provoke(uint32_t length)
{
	char type[64] = "";
	pid_t pid;
	int status;

	if (length >= sizeof(type) || read_all(type, length))
		fatal("bad provoke message");
	have_baseline = 0;
	pid = fork();
	if (pid == 0) {
		write_file("/sys/kernel/debug/provoke-crash/DIRECT", type);
		_exit(0);
	}
	while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	send_done(DONE_COMPLETED, 0, -1, 0);
}

/*
 * Run a static executable the host sent (a C reproducer, say) once, with its stdout and
 * stderr collected and sent back with its wait status. It runs as root in the same guest
 * the programs run in, after the runner's own boot-time settings.
 */
static void exec_binary(uint32_t length)
{
	static char output[WIRE_MAX_EXEC_OUTPUT];
	static char chunk[65536];
	struct wire_exec_done done = { .status = -1 };
	const char *path = "/tmp/hmmfuzz-exec";
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	int out[2];
	pid_t pid;

	have_baseline = 0;
	for (uint32_t left = length; left; ) {
		uint32_t n = left < sizeof(chunk) ? left : sizeof(chunk);

		if (read_all(chunk, n))
			fatal("read executable");
		if (fd >= 0 && write(fd, chunk, n) != (ssize_t)n) {
			close(fd);
			fd = -1;
		}
		left -= n;
	}
	if (fd < 0 || close(fd) || pipe2(out, O_CLOEXEC)) {
		done.output_len = snprintf(output, sizeof(output), "hmmfuzz-runner: cannot stage the executable: %s\n",
					   strerror(errno));
		struct iovec parts[] = { PART(&done, sizeof(done)), PART(output, done.output_len) };

		send_message(MSG_EXEC_DONE, parts, 2);
		return;
	}
	pid = fork();
	if (pid == 0) {
		char *argv[] = { (char *)path, NULL };

		dup2(out[1], 1);
		dup2(out[1], 2);
		execv(path, argv);
		dprintf(2, "hmmfuzz-runner: exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	close(out[1]);
	for (ssize_t n; pid > 0 && (n = read(out[0], chunk, sizeof(chunk))) != 0; ) {
		size_t room = sizeof(output) - done.output_len;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		memcpy(output + done.output_len, chunk, (size_t)n < room ? (size_t)n : room);
		done.output_len += (size_t)n < room ? (size_t)n : room;
	}
	close(out[0]);
	while (pid > 0 && waitpid(pid, &done.status, 0) < 0 && errno == EINTR)
		;
	unlink(path);
	send_message(MSG_EXEC_DONE, (struct iovec[]){ PART(&done, sizeof(done)),
						    PART(output, done.output_len) }, 2);
}

static void bench_program(const struct wire_program *program)
{
	struct wire_bench_done result = { .runs = program->repeat };
	struct timespec start, end;

	silent = 1;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (uint32_t run = 0; run < program->repeat; run++) {
		run_program(program);
		result.failed += silent_status != DONE_COMPLETED;
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	silent = 0;
	have_baseline = 0;
	result.nanoseconds = (uint64_t)(end.tv_sec - start.tv_sec) * 1000000000ULL +
			     (uint64_t)(end.tv_nsec - start.tv_nsec);
	send_message(MSG_BENCH_DONE, &PART(&result, sizeof(result)), 1);
}

static void serve(void)
{
	for (;;) {
		struct wire_frame frame;
		struct wire_program program;

		if (read_all(&frame, sizeof(frame)))
			fatal("read from host channel");
		if (frame.magic != WIRE_MAGIC)
			fatal("bad frame magic %#x", frame.magic);
		if (frame.type == MSG_POWEROFF) {
			sync();
			reboot(RB_POWER_OFF);
		}
		if (frame.type == MSG_PROVOKE) {
			provoke(frame.length);
			continue;
		}
		if (frame.type == MSG_EXEC) {
			exec_binary(frame.length);
			continue;
		}
		if (frame.type == MSG_REMEASURE) {
			remeasure();
			continue;
		}
		if (frame.type != MSG_PROGRAM || frame.length < sizeof(program))
			fatal("unexpected message %u", frame.type);
		if (read_all(&program, sizeof(program)))
			fatal("read program");
		if (program.nops > WIRE_MAX_OPS || program.nregions > WIRE_MAX_REGIONS ||
		    frame.length != sizeof(program) + program.nregions * sizeof(struct wire_region) +
		    program.nops * sizeof(struct wire_op))
			fatal("bad program length");
		memset(regions, 0, sizeof(regions));
		nregions = program.nregions;
		if (read_all(regions, nregions * sizeof(struct wire_region)))
			fatal("read regions");
		if (read_all(ops, program.nops * sizeof(struct wire_op)))
			fatal("read ops");
		if (program.repeat > 1)
			bench_program(&program);
		else
			run_program(&program);
	}
}

int main(void)
{
	boot();
	send_hello();
	serve();
	return 0;
}
