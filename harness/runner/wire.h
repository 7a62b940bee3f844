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
#define WIRE_VERSION 1
#define WIRE_MAX_OPS 512
#define WIRE_MAX_OP_PAGES 8192
#define WIRE_MAX_PROCS 4
#define WIRE_MAX_FDS 16
#define WIRE_PORT_NAME_LEN 32

enum wire_msg {
	MSG_HELLO = 1,    /* guest -> host: wire_hello, then the bytes of /proc/config.gz */
	MSG_PROGRAM = 2,  /* host -> guest: wire_program, then nops x wire_op */
	MSG_RESULT = 3,   /* guest -> host: wire_result, then npages x wire_page, then nsnapshot bytes */
	MSG_DONE = 4,     /* guest -> host: wire_done */
	MSG_POWEROFF = 5, /* host -> guest: no payload */
	MSG_PROVOKE = 6   /* host -> guest: an LKDTM crash type (text); answered by MSG_DONE */
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
	WOP_CHECK_EXCLUSIVE = 12
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
	uint32_t target;    /* fork: index of the child; open and device ops: fd slot */
	uint32_t arg;       /* mprotect: wire_prot; write/dev_write: seed; open: device number */
	uint64_t addr;      /* first byte of the page range */
	uint64_t npages;
};

struct wire_program {
	uint32_t nops;
	uint32_t op_timeout_ms;  /* one op taking longer is a hang */
	uint64_t serial;         /* echoed in the console marker, to slice the log per program */
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
	uint32_t reserved;
};

enum wire_done_status {
	DONE_COMPLETED = 0,
	DONE_HUNG = 1,        /* op `failed_op` did not finish within op_timeout_ms */
	DONE_DIED = 2,        /* the process running `failed_op` died (signal in `detail`) */
	DONE_UNKILLABLE = 3,  /* a program process could not be reaped after the program */
	DONE_BAD_PROGRAM = 4  /* the runner refused the program (detail says why) */
};

struct wire_done {
	uint32_t status;      /* enum wire_done_status */
	uint32_t ops_run;
	int32_t failed_op;    /* -1 if none */
	int32_t detail;
};

#endif
