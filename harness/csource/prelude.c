/*
 * What every hmmfuzz C reproducer needs before its steps: the hmm_dmirror ABI, the page
 * pattern the checks compare against, one call per op kind, the checks, and a small
 * machine that runs each step in the process the program names (one pipe per process to
 * hand it its turn, one back to say it is done). The steps follow this prelude.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
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
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A reproducer uses only some of the helpers below */
#pragma GCC diagnostic ignored "-Wunused-function"

/* @@UAPI@@ */

/* @@KERNEL_OPS@@ */

#define MAX_PROCS 4
#define MAX_FDS 16
#define MAX_REGIONS 16
/* Region slot s starts at 32 TiB + s GiB: the addresses hmmfuzz ran the program at */
#define REGION(slot) (0x200000000000ULL + (uint64_t)(slot) * (1ULL << 30))
/* madvise advice newer than some C libraries (include/uapi/asm-generic/mman-common.h) */
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

enum backing { ANON, SHARED, MEMFD, FILE_PRIVATE };

/* ------------------------------------------------------------------ what an op reported */

struct outcome {
	long long err;          /* errno, 0 on success */
	long long cpages;       /* -1: the ioctl copied nothing back */
	long long faults;
	unsigned long npages;
	uint8_t *bytes;         /* the pages a CPU read or a device transfer returned */
	int signal[8192];       /* per page: the signal a CPU access raised */
};

static struct outcome result;
static int device_fds[MAX_FDS];    /* per process: fork copies it like the fd table */
static int memfds[MAX_REGIONS], files[MAX_REGIONS];
static int failure_count;
static int *failures = &failure_count; /* shared memory once processes fork */

static void begin(void)
{
	if (result.bytes)
		munmap(result.bytes, result.npages * PAGE_SIZE);
	memset(&result, 0, sizeof(result));
	result.cpages = result.faults = -1;
}

/* ------------------------------------------------------------------ page contents */

static void describe(const uint64_t *words, char *out, size_t len)
{
	uint64_t want[WORDS_PER_PAGE];
	uint32_t seed = words[0] >> 48;

	if (!memcmp(words, (uint64_t[WORDS_PER_PAGE]){0}, PAGE_SIZE)) {
		snprintf(out, len, "zero");
		return;
	}
	fill_pattern(want, seed, ((words[0] >> 9) & VPN_MASK) * PAGE_SIZE);
	if (seed && !memcmp(words, want, PAGE_SIZE))
		snprintf(out, len, "pattern(seed=%u, vpn=%#llx)", seed,
			 (unsigned long long)((words[0] >> 9) & VPN_MASK));
	else
		snprintf(out, len, "unknown bytes (first word %#llx)", (unsigned long long)words[0]);
}

/* ------------------------------------------------------------------ CPU accesses */

static uint8_t *buffer(unsigned long npages)
{
	void *p = mmap(NULL, (npages ? npages : 1) * PAGE_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap of a result buffer");
		exit(2);
	}
	result.npages = npages ? npages : 1;
	return p;
}

static void cpu_read(uint64_t addr, unsigned long npages)
{
	begin();
	result.bytes = buffer(npages);
	for (unsigned long i = 0; i < npages; i++)
		result.signal[i] = guarded_load((const uint64_t *)(addr + i * PAGE_SIZE),
					     (uint64_t *)(result.bytes + i * PAGE_SIZE));
}

static void cpu_write(uint64_t addr, unsigned long npages, uint32_t seed)
{
	uint64_t pattern[WORDS_PER_PAGE];

	begin();
	for (unsigned long i = 0; i < npages; i++) {
		fill_pattern(pattern, seed, addr + i * PAGE_SIZE);
		result.signal[i] = guarded_store((uint64_t *)(addr + i * PAGE_SIZE), pattern);
	}
}

/* ------------------------------------------------------------------ syscalls */

static void syscall_done(long ret)
{
	result.err = ret < 0 ? errno : 0;  /* mremap's MAP_FAILED is -1 too */
}

static void map(uint64_t addr, unsigned long npages, enum backing kind, int slot)
{
	int flags = MAP_FIXED_NOREPLACE, fd = -1;
	off_t offset = 0;
	void *p;

	begin();
	switch (kind) {
	case SHARED:
		flags |= MAP_SHARED | MAP_ANONYMOUS;
		break;
	case MEMFD:
	case FILE_PRIVATE:
		/* page i of the region is page i of its object */
		flags |= kind == MEMFD ? MAP_SHARED : MAP_PRIVATE;
		fd = kind == MEMFD ? memfds[slot] : files[slot];
		offset = addr - REGION(slot);
		break;
	default:
		flags |= MAP_PRIVATE | MAP_ANONYMOUS;
	}
	p = mmap((void *)addr, npages * PAGE_SIZE, PROT_READ | PROT_WRITE, flags, fd, offset);
	result.err = p == MAP_FAILED ? errno : 0;
	if (p != MAP_FAILED && (uint64_t)p != addr) {
		/* a kernel without MAP_FIXED_NOREPLACE takes the address as a hint */
		munmap(p, npages * PAGE_SIZE);
		result.err = EEXIST;
	}
}

/* Not checked in C: prints /proc/self/pagemap and the PFN's kpagecount and kpageflags */
static void show_pagemap(uint64_t addr, unsigned long npages)
{
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	int kpagecount = open("/proc/kpagecount", O_RDONLY);
	int kpageflags = open("/proc/kpageflags", O_RDONLY);

	begin();
	if (pagemap < 0) {
		result.err = errno;
		return;
	}
	for (unsigned long i = 0; i < npages; i++) {
		uint64_t entry = 0, count = 0, flags = 0, pfn;

		if (pread(pagemap, &entry, 8, (addr / PAGE_SIZE + i) * 8) != 8) {
			result.err = errno;
			break;
		}
		pfn = entry & ((1ULL << 55) - 1);
		if (entry >> 63 && pfn && kpagecount >= 0 && kpageflags >= 0) {
			if (pread(kpagecount, &count, 8, pfn * 8) != 8 ||
			    pread(kpageflags, &flags, 8, pfn * 8) != 8)
				count = flags = 0;
		}
		printf("  page %lu: pagemap %#018llx kpagecount %llu kpageflags %#llx\n", i,
		       (unsigned long long)entry, (unsigned long long)count, (unsigned long long)flags);
	}
	close(pagemap);
	if (kpagecount >= 0)
		close(kpagecount);
	if (kpageflags >= 0)
		close(kpageflags);
}

/* ------------------------------------------------------------------ kernel-wide ops */

static void thp(const char *enabled, const char *defrag)
{
	begin();
	result.err = set_thp(enabled, defrag);
}

static void knob(const char *path, const char *text)
{
	begin();
	result.err = write_knob(path, text);
}

/* Not checked in C: prints the per-page status */
static void numa_move(uint64_t addr, unsigned long npages, int node)
{
	static int status[8192];

	begin();
	result.err = move_range(addr, npages, node, status);
	for (unsigned long i = 0; i < npages; i++)
		printf("  page %lu: status %d\n", i, status[i]);
}

static void numa_bind(uint64_t addr, unsigned long npages, int node)
{
	begin();
	result.err = bind_range(addr, npages, node);
}

static void userfault(enum uffd_request request, uint64_t addr, unsigned long npages)
{
	begin();
	result.err = uffd_range(request, addr, npages);
}

/* Not checked in C: prints what KSM did */
static void ksm(void)
{
	int64_t scans;

	begin();
	result.err = ksm_merge_scans(KSM_MAX_WAIT_MS, &scans);
	printf("  ksm: %lld full scans, pages_shared %lld, pages_sharing %lld\n", (long long)scans,
	       (long long)read_number(KSM_DIR "pages_shared"),
	       (long long)read_number(KSM_DIR "pages_sharing"));
}

/* Not checked in C: prints the smaps lines of the VMAs that overlap the range */
static void show_smaps(uint64_t addr, unsigned long npages)
{
	char line[256];
	int inside = 0;
	FILE *smaps = fopen("/proc/self/smaps", "r");

	begin();
	if (!smaps) {
		result.err = errno;
		return;
	}
	while (fgets(line, sizeof(line), smaps)) {
		unsigned long long start, end;

		if (sscanf(line, "%llx-%llx ", &start, &end) == 2 && strchr(line, '-') < strchr(line, ' '))
			inside = start < addr + npages * PAGE_SIZE && end > addr;
		if (inside)
			printf("  %s", line);
	}
	fclose(smaps);
}

static void device_open(int fd_slot, int device)
{
	char path[64];
	int fd;

	begin();
	snprintf(path, sizeof(path), "/dev/hmm_dmirror%d", device);
	fd = open(path, O_RDWR | O_CLOEXEC);
	result.err = fd < 0 ? errno : 0;
	if (fd >= 0)
		device_fds[fd_slot] = fd;
}

static void device_close(int fd_slot)
{
	begin();
	syscall_done(close(device_fds[fd_slot]));
	device_fds[fd_slot] = -1;
}

/* One hmm_dmirror ioctl. `npages` is also the FLAGS value (HMM_DMIRROR_FLAGS takes its
 * flags there). A device write first fills the buffer with the pattern of `seed`. */
static void dmirror(int fd_slot, unsigned long request, uint64_t addr, unsigned long npages,
		    uint32_t seed)
{
	struct hmm_dmirror_cmd cmd = { .addr = addr, .npages = npages };

	begin();
	result.bytes = buffer(request == HMM_DMIRROR_FLAGS ? 1 : npages);
	cmd.ptr = (uintptr_t)result.bytes;
	if (request == HMM_DMIRROR_WRITE)
		for (unsigned long i = 0; i < npages; i++)
			fill_pattern((uint64_t *)(result.bytes + i * PAGE_SIZE), seed,
				     addr + i * PAGE_SIZE);
	if (ioctl(device_fds[fd_slot], request, &cmd)) {
		result.err = errno;
		return;
	}
	result.cpages = cmd.cpages;
	result.faults = cmd.faults;
}

/* ------------------------------------------------------------------ checks
 * Each says what went wrong and returns 0 when the kernel did not do what was expected;
 * the reproducer goes on checking, a TEST_F asserts each one. */

#define ONE_OF(...) (const long long[]){ __VA_ARGS__ }, \
	(int)(sizeof((long long[]){ __VA_ARGS__ }) / sizeof(long long))

static void mismatch(int step, const char *line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void mismatch(int step, const char *line, const char *fmt, ...)
{
	va_list ap;

	printf("step %d (%s): ", step, line);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	__atomic_add_fetch(failures, 1, __ATOMIC_SEQ_CST);
}

/* A value as a person reads it: errno by name, -1 cpages/faults as nothing reported */
static void show(const char *what, long long value, char *out, size_t len)
{
	if (!strcmp(what, "errno") && value)
		snprintf(out, len, "%s", strerrorname_np((int)value) ?: "?");
	else if (value == -1 && strcmp(what, "errno"))
		snprintf(out, len, "none (the ioctl copied nothing back)");
	else
		snprintf(out, len, "%lld", value);
}

/* `seen` must be one of the `n` allowed values */
static int expect(int step, const char *line, const char *what, long long seen,
		  const long long *allowed, int n)
{
	char list[256] = "", text[64];

	for (int i = 0; i < n; i++) {
		if (seen == allowed[i])
			return 1;
		show(what, allowed[i], text, sizeof(text));
		snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? " or " : "", text);
	}
	show(what, seen, text, sizeof(text));
	mismatch(step, line, "%s = %s, expected %s", what, text, list);
	return 0;
}

static int expect_signal(int step, const char *line, unsigned long page, int want)
{
	if (result.signal[page] == want)
		return 1;
	mismatch(step, line, "page %lu: signal %d (%s), expected %d (%s)", page,
			 result.signal[page], result.signal[page] ? strsignal(result.signal[page]) : "none",
		 want, want ? strsignal(want) : "none");
	return 0;
}

/* The page holds the pattern of `seed` written at `vpn` (seed 0: zero-filled) */
static int expect_page(int step, const char *line, unsigned long page, uint32_t seed,
		       uint64_t vpn)
{
	uint64_t want[WORDS_PER_PAGE];
	const uint64_t *seen = (const uint64_t *)(result.bytes + page * PAGE_SIZE);
	char seen_text[96], want_text[96];

	if (seed)
		fill_pattern(want, seed, vpn * PAGE_SIZE);
	else
		memset(want, 0, sizeof(want));
	if (!memcmp(seen, want, PAGE_SIZE))
		return 1;
	describe(seen, seen_text, sizeof(seen_text));
	describe(want, want_text, sizeof(want_text));
	mismatch(step, line, "page %lu holds %s, expected %s", page, seen_text, want_text);
	return 0;
}

/* SNAPSHOT bytes [from, to) all equal `want` */
static int expect_snapshot(int step, const char *line, unsigned long from, unsigned long to,
			   uint8_t want)
{
	for (unsigned long i = from; i < to; i++) {
		if (result.bytes[i] != want) {
			mismatch(step, line, "snapshot byte %lu = %#x, expected %#x", i,
				 result.bytes[i], want);
			return 0;
		}
	}
	return 1;
}

static void create_backing(const int *memfd_slots, const int *file_slots, const unsigned long *pages)
{
	for (int r = 0; r < MAX_REGIONS; r++) {
		char path[64];

		memfds[r] = files[r] = -1;
		if (memfd_slots[r]) {
			memfds[r] = memfd_create("hmmfuzz", 0);
			if (memfds[r] < 0 || ftruncate(memfds[r], pages[r] * PAGE_SIZE))
				perror("memfd");
		}
		if (file_slots[r]) {
			snprintf(path, sizeof(path), "/tmp/hmmfuzz-region%d", r);
			files[r] = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
			if (files[r] < 0 || ftruncate(files[r], pages[r] * PAGE_SIZE))
				perror(path);
			unlink(path);
		}
	}
}

/* The settings hmmfuzz's runner boots with; the model assumes them. Root is needed. */
static void settle_system(void)
{
	static const char *const settings[][2] = {
		{ "/sys/kernel/mm/transparent_hugepage/enabled", "never" },
		{ "/sys/kernel/mm/transparent_hugepage/defrag", "madvise" },
		{ "/sys/kernel/mm/ksm/run", "0" },
		{ "/proc/sys/vm/compaction_proactiveness", "0" },
	};

	for (unsigned i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
		int fd = open(settings[i][0], O_WRONLY);

		if (fd < 0 || write(fd, settings[i][1], strlen(settings[i][1])) < 0)
			fprintf(stderr, "warning: cannot set %s to %s: %s\n", settings[i][0],
				settings[i][1], strerror(errno));
		if (fd >= 0)
			close(fd);
	}
}

/* Each step in the kernel log too, so that the console says which step the kernel was in
 * if it dies under the program (as root; without /dev/kmsg only stdout has it) */
static int kmsg = -1;

static void announce(int index, const char *line)
{
	char text[512];
	int len = snprintf(text, sizeof(text), "hmmfuzz: step %d: %s\n", index, line);

	/* one write per record: /dev/kmsg refuses a record in pieces */
	if (kmsg >= 0 && write(kmsg, text, len < (int)sizeof(text) ? len : (int)sizeof(text) - 1) < 0)
		kmsg = -1;
}

/* Before the first op: settings, no device fds yet, the regions' memfds and files */
static void prepare(const int *memfd_slots, const int *file_slots, const unsigned long *pages)
{
	catch_faults();
	setvbuf(stdout, NULL, _IONBF, 0);
	kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	settle_system();
	for (int f = 0; f < MAX_FDS; f++)
		device_fds[f] = -1;
	create_backing(memfd_slots, file_slots, pages);
}

/* ------------------------------------------------------------------ processes and turns */

enum step_kind { RUN, FORK, EXIT };

struct step {
	enum step_kind kind;
	int proc;           /* the process that runs it */
	int child;          /* FORK: the new process */
	void (*run)(void);
	const char *line;   /* the op as hmmfuzz writes it */
};

/* @@STEPS@@ */

static int go[MAX_PROCS][2], done[2];

/* A program process: wait for a step, run it, say so (a fork's child says its pid) */
static void serve(int me)
{
	for (;;) {
		int index, reply = 0;

		if (read(go[me][0], &index, sizeof(index)) != sizeof(index))
			_exit(0);
		if (steps[index].kind == EXIT)
			_exit(0);
		if (steps[index].kind == FORK) {
			pid_t pid = fork();

			if (pid == 0) {
				me = steps[index].child;
				reply = getpid();
			} else if (pid > 0) {
				continue; /* the child answers for the step */
			} else {
				reply = -errno;
			}
		} else {
			steps[index].run();
		}
		if (write(done[1], &reply, sizeof(reply)) != sizeof(reply))
			_exit(1);
	}
}

/* The step's process answered (its reply), or died under it (returns 0 and says so) */
static int wait_done(int index, pid_t pid, int *reply)
{
	struct pollfd p = { .fd = done[0], .events = POLLIN };
	int sig;

	for (;;) {
		if (poll(&p, 1, 100) > 0 && read(done[0], reply, sizeof(*reply)) == sizeof(*reply))
			return 1;
		if (process_gone(pid, &sig)) {
			mismatch(index, steps[index].line, "process p%d died (signal %d)",
				 steps[index].proc, sig);
			return 0;
		}
	}
}

static int run_program(const int *memfd_slots, const int *file_slots, const unsigned long *pages)
{
	pid_t pid[MAX_PROCS] = { 0 };
	int status, index;

	prepare(memfd_slots, file_slots, pages);
	failures = mmap(NULL, sizeof(*failures), PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (failures == MAP_FAILED || pipe(done))
		return 2;
	for (int p = 0; p < MAX_PROCS; p++)
		if (pipe(go[p]))
			return 2;
	pid[0] = fork();
	if (pid[0] == 0) {
		/* one CPU for every program process, as hmmfuzz runs them: whether a write
		 * fault after fork reuses or copies the page depends on per-CPU LRU batches */
		cpu_set_t cpu0;

		CPU_ZERO(&cpu0);
		CPU_SET(0, &cpu0);
		sched_setaffinity(0, sizeof(cpu0), &cpu0);
		serve(0);
	}
	for (index = 0; index < nsteps; index++) {
		const struct step *step = &steps[index];
		int reply = 0;

		printf("step %d: %s\n", index, step->line);
		announce(index, step->line);
		if (write(go[step->proc][1], &index, sizeof(index)) != sizeof(index))
			return 2;
		if (step->kind == EXIT) {
			while (!process_gone(pid[step->proc], &status))
				usleep(500);
			pid[step->proc] = 0;
			continue;
		}
		if (!wait_done(index, pid[step->proc], &reply))
			break;
		if (step->kind == FORK && reply > 0)
			pid[step->child] = reply;
		else if (step->kind == FORK)
			mismatch(index, step->line, "fork failed: %s", strerror(-reply));
	}
	for (int p = 0; p < MAX_PROCS; p++)
		if (pid[p] > 0)
			kill(pid[p], SIGKILL);
	while (wait(&status) > 0)
		;
	if (*failures)
		printf("FAIL: %d check(s) failed: the kernel did not do what the model allows\n",
		       *failures);
	else
		printf("PASS: every check held\n");
	return *failures ? 1 : 0;
}
