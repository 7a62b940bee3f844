/*
 * How hmmfuzz's ops talk to the kernel, as plain functions returning an errno (0: it
 * worked). The runner (runner.c) reports what they did over the wire; C reproducers
 * (harness/csource) include this file as it is and check it. One home for each syscall
 * sequence, so a reproducer does exactly what the runner did.
 */
#ifndef HMMFUZZ_KERNEL_OPS_H
#define HMMFUZZ_KERNEL_OPS_H

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/mempolicy.h>
#include <linux/userfaultfd.h>

#define PAGE_SIZE 4096UL
#define WORDS_PER_PAGE (PAGE_SIZE / 8)
#define VPN_MASK ((1ULL << 39) - 1)
#define THP_DIR "/sys/kernel/mm/transparent_hugepage/"
#define KSM_DIR "/sys/kernel/mm/ksm/"
/* flags newer than some C libraries (include/uapi/linux/mman.h, asm-generic/mman-common.h) */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

/* ------------------------------------------------------------------ page contents */

/* The page pattern of harness/prog/content.py: word i = (seed << 48) | (vpn << 9) | i */
static void fill_pattern(uint64_t *words, uint32_t seed, uint64_t addr)
{
	uint64_t base = ((uint64_t)seed << 48) | (((addr / PAGE_SIZE) & VPN_MASK) << 9);

	for (unsigned long i = 0; i < WORDS_PER_PAGE; i++)
		words[i] = base | i;
}

/* ------------------------------------------------------------------ CPU accesses */

static sigjmp_buf fault_jump;
static volatile sig_atomic_t fault_signal;

static void on_fault(int sig)
{
	fault_signal = sig;
	siglongjmp(fault_jump, 1);
}

/* A CPU access that faults is an outcome of the op, not the end of the process */
static void catch_faults(void)
{
	struct sigaction sa = { .sa_handler = on_fault };

	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_NODEFER;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
}

/* Copy one page, or return the signal the access raised. Nothing here is live across
 * the siglongjmp, which is what makes it safe. */
static int guarded_load(const volatile uint64_t *src, uint64_t *copy)
{
	if (sigsetjmp(fault_jump, 1))
		return fault_signal;
	for (unsigned long w = 0; w < WORDS_PER_PAGE; w++)
		copy[w] = src[w];
	return 0;
}

static int guarded_store(volatile uint64_t *dst, const uint64_t *pattern)
{
	if (sigsetjmp(fault_jump, 1))
		return fault_signal;
	for (unsigned long w = 0; w < WORDS_PER_PAGE; w++)
		dst[w] = pattern[w];
	return 0;
}

/* ------------------------------------------------------------------ knobs */

static long elapsed_ms(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000;
}

/* Write a sysfs or procfs file: the errno of the open or write, 0 if it worked */
static int write_knob(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY), err = 0;

	if (fd < 0)
		return errno;
	if (write(fd, text, strlen(text)) < 0)
		err = errno;
	close(fd);
	return err;
}

static int64_t read_number(const char *path)
{
	char text[32] = "";
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	return n > 0 ? strtoll(text, NULL, 10) : -1;
}

static int set_thp(const char *enabled, const char *defrag)
{
	int err = write_knob(THP_DIR "enabled", enabled);

	return err ? err : write_knob(THP_DIR "defrag", defrag);
}

/* ------------------------------------------------------------------ NUMA */

/* move_pages(2) of the range to `node`, or (node < 0) only where each page is; `status`
 * gets one entry per page (-EINVAL where the kernel wrote none). A positive return counts
 * pages not migrated: the status array says which. */
static int move_range(uint64_t addr, unsigned long npages, int node, int *status)
{
	static void *pages[8192];
	static int nodes[8192];

	for (unsigned long i = 0; i < npages; i++) {
		pages[i] = (void *)(addr + i * PAGE_SIZE);
		nodes[i] = node;
		status[i] = -EINVAL;
	}
	if (syscall(SYS_move_pages, 0, npages, pages, node < 0 ? NULL : nodes, status,
		    node < 0 ? 0 : MPOL_MF_MOVE) < 0)
		return errno;
	return 0;
}

/* mbind(2) of the range: MPOL_BIND to `node`, MPOL_MF_MOVE */
static int bind_range(uint64_t addr, unsigned long npages, int node)
{
	unsigned long mask = 1UL << node;

	/* maxnode counts one more than the bits the kernel reads (get_nodes: --maxnode) */
	if (syscall(SYS_mbind, addr, npages * PAGE_SIZE, MPOL_BIND, &mask, sizeof(mask) * 8 + 1,
		    MPOL_MF_MOVE))
		return errno;
	return 0;
}

/* ------------------------------------------------------------------ userfaultfd */

static int uffd = -1;
static pid_t uffd_owner;

/* The process's own userfaultfd, made at its first uffd op: UFFD_FEATURE_SIGBUS, so a
 * fault a handler would have to resolve raises SIGBUS instead (handle_userfault). */
static int own_uffd(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_SIGBUS };

	if (uffd >= 0 && uffd_owner == getpid())
		return 0;
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0)
		return errno;
	uffd_owner = getpid();
	if (ioctl(uffd, UFFDIO_API, &api)) {
		int err = errno;

		close(uffd);
		uffd = -1;
		return err;
	}
	return 0;
}

enum uffd_request { UFFD_REGISTER_WP, UFFD_UNREGISTER, UFFD_PROTECT, UFFD_UNPROTECT };

static int uffd_range(enum uffd_request request, uint64_t addr, unsigned long npages)
{
	struct uffdio_range range = { .start = addr, .len = npages * PAGE_SIZE };
	struct uffdio_register reg = { .range = range, .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_writeprotect wp = {
		.range = range, .mode = request == UFFD_PROTECT ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	int err = own_uffd(), failed;

	if (err)
		return err;
	if (request == UFFD_REGISTER_WP)
		failed = ioctl(uffd, UFFDIO_REGISTER, &reg);
	else if (request == UFFD_UNREGISTER)
		failed = ioctl(uffd, UFFDIO_UNREGISTER, &range);
	else
		failed = ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
	return failed ? errno : 0;
}

/* ------------------------------------------------------------------ KSM */

/* KSM scans each page twice before it merges it: the first full scan records a
 * checksum, the next inserts an unchanged page into the unstable tree or merges it
 * (cmp_and_merge_page). The first full scan counted may have started before the op,
 * so it waits for three. */
#define KSM_FULL_SCANS 3
#define KSM_MAX_WAIT_MS 10000
/* ksmd completes no full scan while no mm asked for merging (at most one, of the cursor it
 * had): no full scan for this long means nothing to scan */
#define KSM_IDLE_MS 3000

/* Run KSM as fast as it goes until it has done KSM_FULL_SCANS more full scans (or none
 * for KSM_IDLE_MS), then stop it; ETIMEDOUT after `budget_ms`. `scans`: how many it did. */
static int ksm_merge_scans(long budget_ms, int64_t *scans)
{
	struct timespec start, advanced, pause = { .tv_nsec = 1000000 };
	int64_t first;
	int err;

	*scans = 0;
	/* smart_scan (6.7+) skips pages that did not merge before: off, so every scan looks
	 * at every page (absent on older kernels, where every scan does) */
	write_knob(KSM_DIR "smart_scan", "0");
	err = write_knob(KSM_DIR "pages_to_scan", "100000");
	if (!err)
		err = write_knob(KSM_DIR "sleep_millisecs", "0");
	first = read_number(KSM_DIR "full_scans");
	if (!err && first < 0)
		err = ENOENT;
	if (!err)
		err = write_knob(KSM_DIR "run", "1");
	clock_gettime(CLOCK_MONOTONIC, &start);
	advanced = start;
	while (!err) {
		int64_t now = read_number(KSM_DIR "full_scans") - first;

		if (now != *scans)
			clock_gettime(CLOCK_MONOTONIC, &advanced);
		*scans = now;
		if (*scans >= KSM_FULL_SCANS || elapsed_ms(&advanced) > KSM_IDLE_MS)
			break;
		if (elapsed_ms(&start) > budget_ms)
			err = ETIMEDOUT;
		nanosleep(&pause, NULL);
	}
	write_knob(KSM_DIR "run", "0");
	return err;
}

/* ------------------------------------------------------------------ processes */

/* Whether a process of the program is gone: reaped, or a zombie (its mm and files are
 * released then); `sig` is the signal that killed it, when that can be known. */
static int process_gone(pid_t pid, int *sig)
{
	char path[64], stat[256];
	int fd, status;
	ssize_t n;
	char *state;

	/* The first process is our child: waitpid tells us directly. */
	if (waitpid(pid, &status, WNOHANG) == pid) {
		*sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
		return 1;
	}
	/* Grandchildren are not ours to wait for: look at their state instead. */
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 1;
	n = read(fd, stat, sizeof(stat) - 1);
	close(fd);
	stat[n > 0 ? n : 0] = 0;
	state = strrchr(stat, ')');
	*sig = 0;
	return state && (state[2] == 'Z' || state[2] == 'X');
}

#endif
