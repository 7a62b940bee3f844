/*
 * The protocol between the host and the in-guest runner, over a virtio-serial port.
 * This one file is compiled into runner.c and parsed by cffi on the host
 * (harness/runner/wire.py), so both sides share every size, field and number.
 * Keep it to fixed-width structs, enums and `#define NAME <integer>` lines: cffi's cdef()
 * reads it after the preprocessor lines it cannot evaluate are dropped.
 *
 * Every message is a wire_frame followed by `length` bytes of payload.
 */
#ifndef HMMFUZZ_WIRE_H
#define HMMFUZZ_WIRE_H
#include <stdint.h>

#define WIRE_MAGIC 0x484d4d46
#define WIRE_VERSION 3
#define WIRE_MAX_OPS 512
#define WIRE_MAX_OP_PAGES 8192
#define WIRE_MAX_VALUES 8192
#define WIRE_MAX_PROCS 4
#define WIRE_MAX_FDS 16
#define WIRE_MAX_REGIONS 16
#define WIRE_PORT_NAME_LEN 32

enum wire_msg {
	MSG_HELLO = 1,    /* guest -> host: wire_hello, then the bytes of /proc/config.gz */
	MSG_PROGRAM = 2,  /* host -> guest: wire_program, nregions x wire_region, nops x wire_op */
	MSG_RESULT = 3,   /* guest -> host: wire_result, npages x wire_page, nsnapshot bytes,
			     npagemap x wire_pagemap, nvalues x int64_t */
	MSG_DONE = 4,     /* guest -> host: wire_done */
	MSG_POWEROFF = 5, /* host -> guest: no payload */
	MSG_PROVOKE = 6,  /* host -> guest: an LKDTM crash type (text); answered by MSG_DONE */
	MSG_BENCH_DONE = 7, /* guest -> host: wire_bench_done, after a MSG_PROGRAM with repeat > 1 */
	MSG_EXEC = 8,     /* host -> guest: a static executable (e.g. a C reproducer) to run once */
	MSG_EXEC_DONE = 9, /* guest -> host: wire_exec_done, then its stdout+stderr */
	MSG_REMEASURE = 10, /* host -> guest: no payload; read the memory counters again,
			       MEMORY_RECHECK_MS after the last program's reading */
	MSG_MEMORY = 11    /* guest -> host: WMEM_NCOUNTERS x int64_t */
};

struct wire_frame {
	uint32_t magic;
	uint32_t type;
	uint32_t length;
	uint32_t reserved;
};

struct wire_hello {
	uint32_t version;
	uint32_t devices;      /* bit i set: /dev/hmm_dmirror<i> exists */
	uint32_t fingerprint;  /* of the wire.h the runner was built from (WIRE_FINGERPRINT) */
	uint32_t reserved;
	char release[128];     /* uname -r */
	char machine[32];      /* uname -m */
};

enum wire_op_kind {
	WOP_MAP = 1,
	WOP_MUNMAP = 2,
	WOP_MPROTECT = 3,
	WOP_WRITE = 4,
	WOP_READ = 5,
	WOP_FORK = 6,
	WOP_OPEN = 7,
	WOP_DEV_READ = 8,
	WOP_DEV_WRITE = 9,
	WOP_SNAPSHOT = 10,
	WOP_EXCLUSIVE = 11,
	WOP_CHECK_EXCLUSIVE = 12,
	WOP_MIGRATE_TO_DEV = 13,
	WOP_MIGRATE_TO_SYS = 14,
	WOP_RELEASE = 15,   /* addr/npages: any valid range (the ioctl checks it, RELEASE ignores it) */
	WOP_FLAGS = 16,     /* arg: the flags, passed as hmm_dmirror_cmd.npages */
	WOP_EXIT = 17,
	WOP_CLOSE = 18,
	WOP_MADVISE = 19,   /* arg: enum wire_madv */
	WOP_MREMAP = 20,    /* arg: enum wire_mremap bits; addr2: destination; npages2: new size */
	WOP_MLOCK = 21,
	WOP_MUNLOCK = 22,
	WOP_PAGEMAP = 23,
	WOP_THP = 24,           /* arg: wire_thp_enabled | wire_thp_defrag << 8 */
	WOP_COMPACT = 25,
	WOP_CLEAR_SOFT_DIRTY = 26,
	WOP_MOVE_PAGES = 27,    /* arg: target node, or WIRE_NODE_QUERY; values: status array */
	WOP_MBIND = 28,         /* arg: node */
	WOP_UFFD_REGISTER = 29,
	WOP_UFFD_UNREGISTER = 30,
	WOP_UFFD_WP = 31,       /* arg: 1 write-protect, 0 un-protect */
	WOP_KSM_MERGE = 32,     /* values: wire_ksm_value */
	WOP_SMAPS = 33          /* values: per VMA, start, end, then WSMAPS_NFIELDS fields */
};

/* WOP_MOVE_PAGES's arg without a target node: only ask where the pages are */
#define WIRE_NODE_QUERY 0xFFFFFFFF

/* WOP_THP: /sys/kernel/mm/transparent_hugepage/enabled and defrag */
enum wire_thp_enabled {
	WTHP_ALWAYS = 0,
	WTHP_MADVISE = 1,
	WTHP_NEVER = 2
};

enum wire_thp_defrag {
	WDEFRAG_ALWAYS = 0,
	WDEFRAG_DEFER = 1,
	WDEFRAG_DEFER_MADVISE = 2,
	WDEFRAG_MADVISE = 3,
	WDEFRAG_NEVER = 4
};

/* What the int64 values after a result's pagemap records are */
enum wire_values_kind {
	WVAL_NONE = 0,
	WVAL_NODE_STATUS = 1,  /* move_pages status per page: node, or -errno */
	WVAL_SMAPS = 2,        /* per VMA: start, end, WSMAPS_NFIELDS fields in kB (-1: absent) */
	WVAL_KSM = 3           /* enum wire_ksm_value */
};

/* /proc/<pid>/smaps fields of a WOP_SMAPS VMA record, in this order */
enum wire_smaps_field {
	WSMAPS_RSS = 0,
	WSMAPS_PSS = 1,
	WSMAPS_SHARED_CLEAN = 2,
	WSMAPS_SHARED_DIRTY = 3,
	WSMAPS_PRIVATE_CLEAN = 4,
	WSMAPS_PRIVATE_DIRTY = 5,
	WSMAPS_REFERENCED = 6,
	WSMAPS_ANONYMOUS = 7,
	WSMAPS_ANON_HUGE_PAGES = 8,
	WSMAPS_SWAP = 9,
	WSMAPS_SWAP_PSS = 10,
	WSMAPS_LOCKED = 11,
	WSMAPS_NFIELDS = 12
};

/* WOP_KSM_MERGE's values */
enum wire_ksm_value {
	WKSM_FULL_SCANS = 0,     /* full scans completed while it ran */
	WKSM_PAGES_SHARED = 1,
	WKSM_PAGES_SHARING = 2,
	WKSM_NVALUES = 3
};

/* What backs a mapping (WOP_MAP's arg) */
enum wire_map_kind {
	WMAP_ANON = 0,    /* MAP_PRIVATE | MAP_ANONYMOUS */
	WMAP_SHARED = 1,  /* MAP_SHARED | MAP_ANONYMOUS */
	WMAP_MEMFD = 2,   /* MAP_SHARED of the region's memfd */
	WMAP_FILE = 3     /* MAP_PRIVATE of the region's tmpfs file */
};

/* madvise advice: the kernel's MADV_* numbers (include/uapi/asm-generic/mman-common.h),
 * passed to madvise() as they are */
enum wire_madv {
	WMADV_WILLNEED = 3,
	WMADV_DONTNEED = 4,
	WMADV_FREE = 8,
	WMADV_DONTFORK = 10,
	WMADV_DOFORK = 11,
	WMADV_MERGEABLE = 12,
	WMADV_UNMERGEABLE = 13,
	WMADV_HUGEPAGE = 14,
	WMADV_NOHUGEPAGE = 15,
	WMADV_WIPEONFORK = 18,
	WMADV_KEEPONFORK = 19,
	WMADV_COLD = 20,
	WMADV_PAGEOUT = 21,
	WMADV_POPULATE_READ = 22,
	WMADV_POPULATE_WRITE = 23,
	WMADV_COLLAPSE = 25
};

/* WOP_MREMAP's arg */
enum wire_mremap {
	WMREMAP_MOVE = 1,      /* MREMAP_MAYMOVE | MREMAP_FIXED to addr2 */
	WMREMAP_DONTUNMAP = 2  /* | MREMAP_DONTUNMAP */
};

/* Objects backing WMAP_MEMFD / WMAP_FILE mappings of a region, created per program */
enum wire_backing {
	WBACK_MEMFD = 1,
	WBACK_FILE = 2
};

struct wire_region {
	uint64_t addr;
	uint32_t pages;
	uint32_t backing;  /* enum wire_backing bits: the objects the program maps */
};

/* mprotect protections, as the runner passes them to the kernel */
enum wire_prot {
	WPROT_NONE = 0,
	WPROT_R = 1,
	WPROT_RW = 3
};

struct wire_op {
	uint32_t kind;      /* enum wire_op_kind */
	uint32_t proc;      /* index of the process that runs it */
	uint32_t target;    /* fork: index of the child; open, close and device ops: fd slot;
			     * map: region index */
	uint32_t arg;       /* mprotect: wire_prot; write/dev_write: seed; open: device number;
			     * map: wire_map_kind; madvise: wire_madv; mremap: wire_mremap;
			     * flags: the flags */
	uint64_t addr;      /* first byte of the page range */
	uint64_t npages;
	uint64_t addr2;     /* mremap: destination address (with WMREMAP_MOVE) */
	uint64_t npages2;   /* mremap: new size in pages */
};

struct wire_program {
	uint32_t nops;
	uint32_t op_timeout_ms;  /* one op taking longer is a hang */
	uint64_t serial;         /* echoed in the console marker, to slice the log per program */
	uint32_t nregions;       /* wire_region records before the ops */
	uint32_t repeat;         /* > 1: benchmark: run it this many times in the guest, report
				    no per-op results, answer one MSG_BENCH_DONE */
};

struct wire_exec_done {
	int32_t status;          /* wait status of the executable; -1 if it could not be started */
	uint32_t output_len;     /* bytes of its stdout+stderr that follow (at most WIRE_MAX_EXEC_OUTPUT) */
};

#define WIRE_MAX_EXEC_OUTPUT 262144

struct wire_bench_done {
	uint64_t nanoseconds;    /* guest time for all the runs */
	uint32_t runs;
	uint32_t failed;         /* runs that did not complete */
};

/* Per-page outcome of a CPU access or device transfer */
struct wire_page {
	uint32_t crc;         /* zlib crc32 of the 4 KiB read */
	int32_t signal;       /* signal raised by the CPU access, 0 if none */
	uint64_t first_word;  /* first 64-bit word read */
	uint32_t has_content; /* crc/first_word are meaningful */
	uint32_t reserved;
};

struct wire_result {
	uint32_t op_index;
	int32_t err;          /* errno of the syscall or ioctl, 0 on success */
	uint32_t has_cmd;     /* the ioctl copied hmm_dmirror_cmd back: cpages/faults are valid */
	uint32_t npages;      /* wire_page records that follow */
	uint64_t cpages;
	uint64_t faults;
	uint32_t nsnapshot;   /* snapshot bytes that follow the pages */
	uint32_t npagemap;    /* wire_pagemap records that follow the snapshot bytes */
	uint32_t nvalues;     /* int64_t values that follow the pagemap records */
	uint32_t values_kind; /* enum wire_values_kind */
};

/* One page of a WOP_PAGEMAP */
struct wire_pagemap {
	uint64_t entry;       /* /proc/self/pagemap */
	uint64_t count;       /* /proc/kpagecount of the PFN (has_page) */
	uint64_t flags;       /* /proc/kpageflags of the PFN (has_page) */
	uint32_t has_page;    /* present with a PFN: count/flags were read */
	uint32_t reserved;
};

enum wire_done_status {
	DONE_COMPLETED = 0,
	DONE_HUNG = 1,        /* op `failed_op` did not finish within op_timeout_ms */
	DONE_DIED = 2,        /* the process running `failed_op` died (signal in `detail`) */
	DONE_UNKILLABLE = 3,  /* a program process could not be reaped after the program */
	DONE_BAD_PROGRAM = 4, /* the runner refused the program (detail says why) */
	DONE_NO_PROCESS = 5   /* the kernel would not fork the program's first process (errno in
				 detail): the guest is broken, by a program before this one */
};

/* System memory counters the runner reads before a program and after its processes are
 * gone (each time after draining per-CPU LRU batches, shrinking caches and waiting for an
 * RCU grace period), for the host's leak check. In pages unless named otherwise; -1: the
 * kernel does not have it. */
enum wire_memory_counter {
	WMEM_FREE = 0,            /* /proc/vmstat nr_free_pages (buddy) */
	WMEM_PCP = 1,             /* /proc/zoneinfo: pages on per-CPU free lists, all zones */
	WMEM_SLAB = 2,            /* nr_slab_reclaimable + nr_slab_unreclaimable */
	WMEM_PAGETABLES = 3,      /* nr_page_table_pages */
	WMEM_KERNEL_STACK_KB = 4, /* nr_kernel_stack (kB) */
	WMEM_ZSPAGES = 5,         /* nr_zspages: zram's compressed swap */
	WMEM_MEMMAP = 6,          /* nr_memmap_pages (6.8+): struct pages of hotplugged memory,
				     such as the test device's chunks */
	WMEM_ANON = 7,            /* nr_anon_pages */
	WMEM_FILE = 8,            /* nr_file_pages (page cache, shmem, swap cache) */
	WMEM_DEVICE_CHUNKS = 9,   /* "hmm_dmirror" resources in /proc/iomem: device memory
				     chunks the test device holds */
	WMEM_VMALLOC_KB = 10,     /* /proc/meminfo VmallocUsed (kB): vmalloc'd kernel stacks
				     and buffers */
	WMEM_PERCPU_KB = 11,      /* /proc/meminfo Percpu (kB) */
	WMEM_NCOUNTERS = 12
};

struct wire_done {
	uint32_t status;      /* enum wire_done_status */
	uint32_t ops_run;
	int32_t failed_op;    /* -1 if none */
	int32_t detail;
	uint32_t measured;    /* the memory counters below were read (a completed program) */
	uint32_t reserved;
	int64_t memory_before[WMEM_NCOUNTERS];
	int64_t memory_after[WMEM_NCOUNTERS]; /* read again on MSG_REMEASURE when the host
						 suspects a leak: a transient allocation is
						 in one reading only */
};

#endif
