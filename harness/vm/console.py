"""The crash oracle: reading the kernel console for reports of trouble.

`find_reports(console)` cuts a console log into reports (one per incident) and gives each a
stable title for deduplication: the kind of report and the guilty function, e.g.
`WARNING in restore_exclusive_pte`, `kernel BUG in make_device_exclusive`,
`BUG: unable to handle page fault in lkdtm_WRITE_RO`. A title carries no offsets,
addresses, PIDs, CPU numbers, durations or timestamps, so two runs of the same bug on the
same kernel give the same title (and usually the same one across kernel versions, whose
report formats differ: 6.1 prints `WARNING: CPU: 0 PID: 46 at file:line func+0x..`,
7.2 prints `WARNING: file:line at func+0x.., CPU#0: comm/pid`).

How a console becomes reports:
- A report starts at a header line (`WARNING:`, `kernel BUG at`, `BUG: ...`, an Oops
  header, `watchdog: BUG: soft lockup`, `INFO: task ... blocked`, `rcu: INFO: ... stall`,
  `Kernel panic - not syncing`, ...). The lines the kernel prints just before the header as
  part of the same report come with it: `------------[ cut here ]------------`, the message
  of a WARN_ON_ONCE(cond, "msg"), the page dump of a VM_BUG_ON_PAGE/VM_WARN_ON_FOLIO.
- Lines that continue the report they follow never start one: the Oops header after
  `kernel BUG at` or `BUG: unable to handle page fault`, and a `Kernel panic - not syncing`
  that is the consequence of the report before it (`Fatal exception`, `softlockup: hung
  tasks`, ...), wherever it appears later in the log.
- A report ends at its `---[ end trace` marker (for an Oops, after the epilogue that
  follows it: the RIP again, the panic), or where its stack trace ends, or at the next
  report. If the log ends first, the report is marked `corrupted` (the log was cut).
- The guilty function comes from the report's own line or RIP when that names the culprit,
  else from the first reliable frame of the call trace (frames marked `?` are not
  reliable); the machinery that reports (`__warn`, `report_bug`, `handle_bug`,
  `exc_invalid_op`, `asm_exc_*`, `dump_stack*`, `panic`, page-fault handlers, ...) and,
  per kind, the generic checker that found the problem (`refcount_warn_saturate`, the
  list_debug validators, page_table_check, the page allocator's free path, the
  scheduler's wait functions for a hung task, spinlock slow paths for a lockup) are
  skipped, and so are library helpers (kfree, memcpy, copy_to_user, KCOV's hook, ...),
  whose caller is blamed. LKDTM's `lkdtm_<TYPE>` functions are the guilty ones in LKDTM
  tests. A report cut before any function was printed is titled by its file, if it has one.
- A stall (soft or hard lockup, RCU stall) catches a looping CPU anywhere in its loop, so
  its top frame changes from one report to the next; its guilty function is read from the
  bottom of the stack instead: the first function above the syscall, fault or kthread
  entry (and dispatchers such as the ioctl switch) that does real work.
- Incidents: repeats of the same title are one report (with a count); a soft lockup,
  a hard lockup and an RCU stall in the same function are one incident, titled by the most
  specific of them whatever order they came in (their timers race).

The in-guest runner writes `hmmfuzz: program N start` / `end` to /dev/kmsg;
`slice_program(console, serial)` cuts one program's part out of a whole console log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Kind(StrEnum):
    WARNING = "WARNING"
    BUG = "BUG"                                   # kernel BUG at / BUG_ON / VM_BUG_ON_*
    INVALID_OPCODE = "invalid opcode"             # a ud2 that is not a BUG()
    PAGE_FAULT = "page fault"
    NULL_DEREF = "NULL pointer dereference"
    GENERAL_PROTECTION = "general protection fault"
    STACK_GUARD = "stack guard page"
    DOUBLE_FAULT = "double fault"
    OOPS = "Oops"                                 # any other Oops header
    LIST_CORRUPTION = "list corruption"
    PAGE_TABLE_CHECK = "page table check"
    BAD_PAGE_STATE = "Bad page state"
    BAD_PAGE_MAP = "Bad page map"
    BAD_RSS_COUNTER = "Bad rss-counter state"
    PAGE_DUMP = "page dump"                       # a dump_page() with no report around it
    SOFT_LOCKUP = "soft lockup"
    HARD_LOCKUP = "hard lockup"
    HUNG_TASK = "hung task"
    RCU_STALL = "RCU stall"
    PANIC = "panic"
    OTHER_BUG = "other BUG"                       # any other `BUG: ...` line


@dataclass(frozen=True)
class ConsoleReport:
    kind: Kind
    title: str                      # stable: kind + guilty function, for deduplication
    guilty_function: str | None     # without offset or compiler suffix (.isra.0, ...)
    text: str                       # the report's lines, timestamps stripped
    corrupted: bool = False         # the log was cut (or interleaved) inside the report
    corrupted_reason: str = ""
    detail: str = ""                # the WARN message, panic message, bad page reason, ...
    line: int = 0                   # index of the report's first line in the console
    count: int = 1                  # how many times the same report was printed
    fatal: bool = False             # an Oops or panic: the kernel died of it


# ---------------------------------------------------------------------------- line shapes

_PREFIX = re.compile(r"^(?:<\d+>)?\[\s*\d+\.\d+\](?:\[\s*[CT]\d+\])?\s?")
_FRAME = re.compile(r"^\s*(?P<q>\? )?(?P<func>[A-Za-z_][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
                    r"(?: \[[^\]]*\])?\s*$")
_RIP = re.compile(r"^\s*RIP: (?P<cs>[0-9a-f]{4}):(?:(?P<func>[A-Za-z_][\w.$]*)\+0x[0-9a-f]+"
                  r"/0x[0-9a-f]+|0x[0-9a-f]+|\S*)")
_REGS = re.compile(r"^\s*(?:R[A-Z0-9]{1,2}|[CDEFGS]S|CR\d|DR\d|PKRU|EFLAGS|ORIG_RAX)\s*:|"
                   r"^\s*Code: |^\s*(?:RSP|RAX|RDX|RBP|R\d\d?):")
_CONTEXT_MARK = re.compile(r"^\s*</?(?:TASK|IRQ|NMI|SOFTIRQ|EOI|#DF|#MC|#DB|#VC|#HV|IST\d*)>\s*$")
_CUT_HERE = "------------[ cut here ]------------"
_END_TRACE = re.compile(r"^---\[ end trace [0-9a-f]+ \]---")
_MARKER = re.compile(r"^hmmfuzz: program (?P<serial>\d+) (?P<what>start|end)\s*$")

# Lines the kernel prints inside a report, besides frames and registers.
_BODY = re.compile(
    r"^(?:Call Trace:|CPU: \d+ |Hardware name:|Tainted: |Modules linked in:|Workqueue: |"
    r"Kernel panic - not syncing|Kernel Offset:|Disabling lock debugging|Sending NMI from CPU|"
    r"NMI backtrace for cpu|task:\S+\s+state:|\s+(?:Not tainted|Tainted:)|\"echo 0 > |"
    r"#PF: |PGD [0-9a-f]+ |page: |page:[0-9a-f]|head: |memcg:|flags: |page_type: |raw: |"
    r"head: |page dumped because: |anon flags:|file flags:|addr:[0-9a-f]|file:\S* fault:|"
    r"(?:pgd|p4d|pud|pmd):[0-9a-f]|Showing all locks held|INFO: lockdep is turned off|"
    r"INFO: task \S+ is blocked on|INFO: task \S+ blocked on|rcu: |\t|Stack dump where|"
    r"RCU grace-period kthread stack dump:|Shutting down cpus with NMI|Rebooting in|"
    r"Dumping ftrace buffer|---\[ end |Uhhuh\. NMI)")

# The first line of a page, vma or mm dump (printed just before VM_BUG_ON_*/VM_WARN_ON_*).
_DUMP_START = re.compile(r"^(?:page: |page:[0-9a-f]|vma [0-9a-f]+ start |mm [0-9a-f]+ task_size )")
_PAGE_DUMPED = re.compile(r"^page dumped because: (?P<reason>.*)")
# dump_page() callers that inform rather than complain (memory offlining, contig allocation).
_INFORMATIONAL_DUMP = re.compile(r"^(?:isolation failed|migration failure|unmovable page|"
                                 r"offlining|alloc_contig)")

# Panics that are the consequence of the report before them, not a finding of their own:
# the panic message, and the kinds of report it follows (None: any Oops).
_CONSEQUENCES = (
    (re.compile(r"^(?:Fatal exception|Attempted to kill (?:init|the idle task)|Oops - BUG)"), None),
    (re.compile(r"^softlockup: hung tasks"), {"soft lockup"}),
    (re.compile(r"^hung_task: blocked tasks"), {"hung task"}),
    (re.compile(r"^Hard LOCKUP"), {"hard lockup"}),
    (re.compile(r"^RCU Stall"), {"RCU stall"}),
    (re.compile(r"^(?:\S+: )?panic_on_warn set"),
     {"WARNING", "list corruption", "page table check"}),
)


# ---------------------------------------------------------------------------- report headers

@dataclass(frozen=True)
class _Header:
    kind: Kind
    phrase: str            # the title before " in <function>"
    func: str | None = None   # a function the header line itself names
    file: str | None = None
    detail: str = ""
    fatal: bool = False    # an Oops header
    oops_header: bool = False
    single_line: bool = False  # the report is this line alone (no trace follows)
    needs_end: bool = False    # printed by __warn or die(): complete at `---[ end trace`
    warning: bool = False      # a WARNING line (its message is printed next to it)


_WARN_OLD = re.compile(r"^WARNING: CPU: \d+ PID: \d+ at (?:(?P<file>\S+):\d+ )?"
                       r"(?P<func>[A-Za-z_][\w.$]*)?(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?")
_WARN_NEW = re.compile(r"^WARNING: (?:(?P<file>\S+):\d+ )?at (?P<func>[A-Za-z_][\w.$]*)?"
                       r"(?:\+0x[0-9a-f]+/0x[0-9a-f]+|0x[0-9a-f]+)?, CPU#\d+: ")
_WARN_OTHER = re.compile(r"^WARNING: (?P<text>.+)")
_KERNEL_BUG = re.compile(r"^kernel BUG at (?P<file>[^:\s]+):\d+!")
_OOPS = re.compile(r"^(?:Oops: )?(?P<what>[A-Za-z].*?): [0-9a-f]{4,} \[#\d+\]")
_PAGE_FAULT = re.compile(r"^BUG: (?:unable to handle page fault for address|"
                         r"unable to handle kernel paging request)")
_NULL_DEREF = re.compile(r"^BUG: (?:kernel NULL pointer dereference|"
                         r"unable to handle kernel NULL pointer dereference)")
_STACK_GUARD = re.compile(r"^BUG: (?P<stack>\w+) stack guard page was hit")
_BAD_PAGE_STATE = re.compile(r"^BUG: Bad page state in process")
_BAD_PAGE_MAP = re.compile(r"^BUG: Bad page map in process")
_BAD_RSS = re.compile(r"^BUG: Bad rss-counter state")
_MM_COUNTER = re.compile(r"^BUG: non-zero (?:pgtables_bytes|nr_ptes|nr_pmds|nr_puds) on freeing mm")
_SUPPRESSED = re.compile(r"^BUG: .*: \d+ messages suppressed")
_SOFT_LOCKUP = re.compile(r"^(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck for \d+s!")
_HARD_LOCKUP = re.compile(r"^(?:[\w ]+: )?(?:CPU\d+: )?Watchdog detected hard LOCKUP on cpu \d+")
_HUNG_TASK = re.compile(r"^INFO: task .+:\d+ blocked.* for more than \d+ seconds")
_RCU_STALL = re.compile(r"^(?:rcu: )?INFO: rcu_\w+ (?:self-detected stall|detected stalls?|"
                        r"detected expedited stalls)")
_PANIC = re.compile(r"^Kernel panic - not syncing: ?(?P<msg>.*)")
_DOUBLE_FAULT = re.compile(r"^PANIC: double fault")
_OTHER_BUG = re.compile(r"^BUG: (?P<text>.+)")


def _header(line: str) -> _Header | None:
    """The report header this line is, if it is one."""
    if not line or not line[0].isalpha():
        return None
    if line.startswith("WARNING: "):
        match = _WARN_NEW.match(line) or _WARN_OLD.match(line)
        if match:
            return _warning_header(match.group("file"), match.group("func"))
        text = _WARN_OTHER.match(line).group("text")
        return _Header(Kind.WARNING, f"WARNING: {_sanitize(_phrase(text))}", needs_end=True,
                       warning=True)
    match = _KERNEL_BUG.match(line)
    if match:
        file = match.group("file")
        if file.endswith("page_table_check.c"):
            return _Header(Kind.PAGE_TABLE_CHECK, "BUG: page table check", file=file,
                           needs_end=True)
        if file.endswith("list_debug.c"):
            return _Header(Kind.LIST_CORRUPTION, "list corruption", file=file, needs_end=True)
        return _Header(Kind.BUG, "kernel BUG", file=file, needs_end=True)
    if _PAGE_FAULT.match(line):
        return _Header(Kind.PAGE_FAULT, "BUG: unable to handle page fault", needs_end=True)
    if _NULL_DEREF.match(line):
        return _Header(Kind.NULL_DEREF, "BUG: kernel NULL pointer dereference", needs_end=True)
    match = _STACK_GUARD.match(line)
    if match:
        return _Header(Kind.STACK_GUARD, f"BUG: {match.group('stack')} stack guard page was hit",
                       needs_end=True)
    if _BAD_PAGE_STATE.match(line):
        return _Header(Kind.BAD_PAGE_STATE, "BUG: Bad page state")
    if _BAD_PAGE_MAP.match(line):
        return _Header(Kind.BAD_PAGE_MAP, "BUG: Bad page map")
    if _BAD_RSS.match(line):
        return _Header(Kind.BAD_RSS_COUNTER, "BUG: Bad rss-counter state", detail=line,
                       single_line=True)
    if _MM_COUNTER.match(line):   # check_mm(): page-table counters left at exit, no trace
        return _Header(Kind.OTHER_BUG, f"BUG: {_sanitize(line[5:])}", detail=line, single_line=True)
    if _SOFT_LOCKUP.match(line):
        return _Header(Kind.SOFT_LOCKUP, "BUG: soft lockup")
    if _HARD_LOCKUP.match(line):
        return _Header(Kind.HARD_LOCKUP, "BUG: hard lockup")
    if _HUNG_TASK.match(line):
        return _Header(Kind.HUNG_TASK, "INFO: task hung")
    if _RCU_STALL.match(line):
        return _Header(Kind.RCU_STALL, "INFO: rcu detected stall")
    match = _PANIC.match(line)
    if match:
        message = match.group("msg").strip()
        func = None
        found = re.search(r"\b([A-Za-z_][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+", message)
        if found:  # "stack-protector: Kernel stack is corrupted in: func+0x../0x.."
            func = found.group(1)
        return _Header(Kind.PANIC, f"kernel panic: {_sanitize(message)}", func=func, detail=message,
                       fatal=True)
    if _DOUBLE_FAULT.match(line):
        return _Header(Kind.DOUBLE_FAULT, "PANIC: double fault", fatal=True, oops_header=True)
    match = _OOPS.match(line)
    if match:
        what = match.group("what").strip()
        if what.startswith("general protection fault"):
            return _Header(Kind.GENERAL_PROTECTION, "general protection fault", fatal=True,
                           oops_header=True)
        if what == "invalid opcode":
            return _Header(Kind.INVALID_OPCODE, "invalid opcode", fatal=True, oops_header=True)
        if what == "stack guard page":
            return _Header(Kind.STACK_GUARD, "BUG: stack guard page was hit", fatal=True,
                           oops_header=True)
        if what == "double fault":
            return _Header(Kind.DOUBLE_FAULT, "PANIC: double fault", fatal=True, oops_header=True)
        return _Header(Kind.OOPS, f"Oops: {_sanitize(_phrase(what))}" if what != "Oops" else "Oops",
                       fatal=True, oops_header=True)
    if _SUPPRESSED.match(line):
        return None
    match = _OTHER_BUG.match(line)
    if match:
        return _Header(Kind.OTHER_BUG, f"BUG: {_sanitize(_phrase(match.group('text')))}",
                       detail=match.group("text"))
    return None


def _phrase(text: str) -> str:
    """What a free-form report line says, without the particulars that follow it:
    `scheduling while atomic: init/46/0x00000002` -> `scheduling while atomic`."""
    return re.split(r": | at | - |, | in process | \(", text, maxsplit=1)[0]


def _warning_header(file: str | None, func: str | None) -> _Header:
    kind, phrase = Kind.WARNING, "WARNING"
    if file and file.endswith("refcount.c"):
        phrase = "WARNING: refcount bug"
    elif file and file.endswith("list_debug.c"):
        kind, phrase = Kind.LIST_CORRUPTION, "list corruption"
    elif file and file.endswith("page_table_check.c"):
        kind, phrase = Kind.PAGE_TABLE_CHECK, "WARNING: page table check"
    return _Header(kind, phrase, func=func, file=file, needs_end=True, warning=True)


def _sanitize(text: str) -> str:
    """A message without its variable parts: addresses, numbers, process names and PIDs."""
    text = re.sub(r"\bin process \S+", "", text)
    text = re.sub(r"\[\S+:\d+\]", "", text)                      # [comm:pid]
    text = re.sub(r"\b[A-Za-z_][\w.$]*\+0x[0-9a-f]+/0x[0-9a-f]+", lambda m: _bare(m.group(0)), text)
    text = re.sub(r"\b\w+:(?:0x)?[0-9a-f]*\d[0-9a-f]*\b", "", text)  # key:value pairs
    text = re.sub(r"(?:0x)?[0-9a-f]{6,}\b", "", text)
    text = re.sub(r"\b0x[0-9a-f]+\b", "", text)
    text = re.sub(r"[-+]?\b\d+(?:\.\d+)?[a-z]{0,2}\b", "", text)   # counts, seconds, CPU#s
    text = re.sub(r"\(\s*\)|\[\s*\]", "", text)
    text = re.sub(r"\s+([,.:;!])", r"\1", text)
    text = re.sub(r"\s{2,}", " ", text).strip()
    return text.rstrip(" ,.:;!#=-")


def _bare(function: str) -> str:
    """`foo.isra.0+0x1a/0x23` -> `foo`: offsets and compiler suffixes change between builds."""
    return function.split("+", 1)[0].split(".", 1)[0]


# ---------------------------------------------------------------------------- guilty frames

_REPORTING = re.compile(
    r"^(?:__warn|warn_slowpath_\w+|__warn_printk|__WARN\w*|report_bug\w*|__report_bug|"
    r"handle_bug|exc_\w+|asm_exc_\w+|asm_sysvec_\w+|asm_common_interrupt|common_interrupt|"
    r"(?:__)?sysvec_\w+|do_error_trap|do_trap|die|__die\w*|oops_end|oops_begin|"
    r"show_regs|__show_regs|show_stack|show_trace_log_lvl|show_regs_if_kernel|dump_stack\w*|"
    r"__dump_stack|panic|vpanic|nmi_panic|check_panic_on_warn|page_fault_oops|"
    r"kernelmode_fixup_or_oops|(?:__)?bad_area\w*|do_user_addr_fault|do_kern_addr_fault|"
    r"handle_page_fault|spurious_kernel_fault|fixup_exception|handle_stack_overflow|"
    r"_printk|printk\w*|vprintk\w*|console_\w+|__pfx_\w+|__sanitizer_\w+|write_comp_data|"
    r"check_kcov_mode|__schedule_bug|__might_resched|__might_sleep|__might_fault|__cant_\w+|"
    r"check_preemption_disabled|debug_smp_processor_id|"
    r"nmi_cpu_backtrace\w*|nmi_trigger_cpumask_backtrace|arch_trigger_cpumask_backtrace|"
    r"trigger_\w*backtrace|default_do_nmi|nmi_handle|__nmi_handle|"
    r"watchdog_timer_fn|watchdog_overflow_callback|__hrtimer_run_queues|hrtimer_run_queues|"
    r"hrtimer_interrupt|__run_hrtimer|update_process_times|tick_\w+|"
    r"irq_exit\w*|__irq_exit\w*|handle_softirqs|__do_softirq|do_softirq\w*|"
    r"rcu_\w+|__rcu_\w+|print_cpu_stall\w*|print_other_cpu_stall|check_cpu_stall|"
    r"sched_show_task|show_state_filter|debug_show_all_locks|"
    r"check_hung_task\w*|check_hung_uninterruptible_tasks|watchdog|hung_task\w*|kthread|"
    r"ret_from_fork\w*|entry_SYSCALL_64\w*|do_syscall_64|x64_sys_call)$")
# Library and allocator helpers: a crash inside them is blamed on their caller.
_HELPERS = re.compile(
    r"^(?:kfree\w*|kvfree\w*|vfree|kmem_cache_\w+|(?:__)?kmalloc\w*|kmalloc\w*|(?:__)?kzalloc\w*|"
    r"krealloc\w*|vmalloc\w*|__vmalloc\w*|(?:__)?slab_\w+|___slab_\w+|slab_\w+|"
    r"(?:__)?mem(?:cpy|move|set|cmp)\w*|str(?:n?cpy|scpy|n?cmp|n?len|n?cat)|"
    r"(?:__)?copy_(?:to|from)_user\w*|_copy_(?:to|from)_user|copy_user_\w+|rep_movs_\w+|"
    r"clear_page\w*|copy_page\w*)$")

_KIND_SKIP = {
    Kind.WARNING: re.compile(r"refcount|^__list_|^list_"),
    Kind.LIST_CORRUPTION: re.compile(r"^__list_|^list_|^__hlist_|^hlist_|^check_data_corruption"),
    Kind.PAGE_TABLE_CHECK: re.compile(r"page_table_check|^set_ptes?$|^set_pte_at$|^set_p[mu]d_at$|"
                                      r"^native_set_|^ptep_|^pmdp_|^pudp_|^native_p[tmu]dp_|"
                                      r"^native_ptep_|^__set_pte"),
    Kind.BAD_PAGE_STATE: re.compile(
        r"^(?:bad_page|free_page_is_bad\w*|free_pages_prepare|free_tail_page\w*|"
        r"(?:__)?free_(?:unref\w*|frozen\w*|one\w*|pcp\w*|pages\w*|compound\w*|large\w*|zone\w*)|"
        r"free_pcppages_bulk|release_pages|folios?_put\w*|__folio_put\w*|(?:__)?put_page\w*|"
        r"destroy_large_folio|free_large_folio|(?:__)?page_cache_release|(?:__|arch_)?tlb_\w+|"
        r"(?:__)?folio_batch_\w+|free_swap_cache|"
        r"free_pages_and_swap_cache|check_new_pages?|prep_new_page|get_page_from_freelist|"
        r"(?:__)?alloc_pages\w*|(?:__)?folio_alloc\w*|rmqueue\w*|__rmqueue\w*|put_pages_list)$"),
    Kind.BAD_PAGE_MAP: re.compile(r"^(?:print_bad_pte|print_bad_page_map|(?:__)?vm_normal_\w+|"
                                  r"_vm_normal_page)$"),
    Kind.HUNG_TASK: re.compile(
        r"^(?:__schedule|schedule\w*|io_schedule\w*|(?:__)?mutex_lock\w*|(?:__)?down\w*|"
        r"down\w*|rwsem_down\w*|(?:__)?percpu_down\w*|percpu_rwsem\w*|rt_mutex\w*|__rt_mutex\w*|"
        r"(?:__|do_)?wait_for_\w+|__wait\w*|wait_on_\w+|wait_\w+|folio_wait\w*|__folio_lock\w*|"
        r"(?:__)?lock_page\w*|__switch_to\w*|context_switch|synchronize_\w+|__synchronize\w*|"
        r"__wait_rcu_gp|out_of_line_wait_on_bit\w*|bit_wait\w*|__flush_work|flush_work)$"),
}
_LOCK_SPIN = re.compile(r"^(?:native_queued_spin_lock\w*|queued_spin_lock\w*|_raw_spin\w+|"
                        r"do_raw_spin\w+|__raw_spin\w+|_raw_(?:read|write)\w+|"
                        r"queued_(?:read|write)_lock\w*|cpu_relax|rep_nop|delay_tsc|__delay|"
                        r"__const_udelay|native_safe_halt|default_idle\w*)$")
for _stall in (Kind.SOFT_LOCKUP, Kind.HARD_LOCKUP, Kind.RCU_STALL):
    _KIND_SKIP[_stall] = _LOCK_SPIN
# `scheduling while atomic`, `sleeping function called from invalid context`: the caller of
# the sleeping primitive is the culprit.
_KIND_SKIP[Kind.OTHER_BUG] = _KIND_SKIP[Kind.HUNG_TASK]


def _skipped(kind: Kind, function: str) -> bool:
    if _REPORTING.match(function) or _HELPERS.match(function):
        return True
    extra = _KIND_SKIP.get(kind)
    return bool(extra and extra.search(function))


def _candidates(lines: list[str], header: _Header):
    """Functions that may be guilty, most telling first: the one the header line names,
    then each kernel RIP with the reliable frames that follow it, then the call trace."""
    if header.func:
        yield _bare(header.func)
    in_trace = False
    for line in lines:
        if line.startswith("Call Trace:"):
            in_trace = True
            continue
        if not in_trace:
            # The report's own registers. (A RIP inside the trace is that of a context the
            # report's own code interrupted: it comes in its turn, below the frames above it.)
            rip = _RIP.match(line)
            if rip and rip.group("cs") == "0010" and rip.group("func"):
                yield _bare(rip.group("func"))
            continue
        frame = _FRAME.match(line)
        if frame and not frame.group("q"):
            yield _bare(frame.group("func"))


# Functions that only pass control on, from a syscall, fault, exit or kernel thread down to
# the code that does the work (and LKDTM's and the HMM test device's own dispatchers).
_DISPATCH = re.compile(
    r"^(?:entry_SYSCALL_64\w*|do_syscall_64|x64_sys_call|__(?:x64|ia32)_sys_\w+|__se_sys_\w+|"
    r"__do_sys_\w+|ksys_\w+|vfs_(?:read|write|ioctl)|do_vfs_ioctl|__vfs_\w+|full_proxy_\w+|"
    r"ret_from_fork\w*|kthread|worker_thread|process_one_work|process_scheduled_works|"
    r"smpboot_thread_fn|do_group_exit|do_exit|exit_mm|mmput|__mmput|"
    r"asm_exc_\w+|exc_\w+|do_user_addr_fault|handle_page_fault|handle_mm_fault|"
    r"__handle_mm_fault|handle_pte_fault|irqentry_\w+|asm_sysvec_\w+|(?:__)?sysvec_\w+|"
    r"syscall_exit_to_user_mode\w*|exit_to_user_mode\w*|arch_do_signal_or_restart|get_signal|"
    r"direct_entry|lkdtm_do_action|dmirror_fops_unlocked_ioctl)$")
_STALLS = (Kind.SOFT_LOCKUP, Kind.HARD_LOCKUP, Kind.RCU_STALL)


def _stall_anchor(lines: list[str]) -> str | None:
    """The function a stalled task is stuck in, read from the bottom of its stack.

    A CPU that loops is caught at a random point of the loop (a callee, the loop's own
    function, KCOV's hook), so the top of the stack changes from one report to the next.
    The bottom does not: the first function above the syscall, fault or kthread entry that
    does real work is the same in every sample."""
    for index, line in enumerate(lines):
        rip = _RIP.match(line)
        if not rip or rip.group("cs") != "0010":
            continue
        frames = [_bare(rip.group("func"))] if rip.group("func") else []
        for follow in lines[index + 1:]:
            if _RIP.match(follow) or follow.strip() == "</TASK>":
                break
            frame = _FRAME.match(follow)
            if frame and not frame.group("q"):
                frames.append(_bare(frame.group("func")))
        for function in reversed(frames):
            if not _DISPATCH.match(function) and not _skipped(Kind.SOFT_LOCKUP, function):
                return function
    return None


def _guilty(lines: list[str], header: _Header) -> str | None:
    if header.kind in _STALLS:
        anchor = _stall_anchor(lines)
        if anchor:
            return anchor
    for function in _candidates(lines, header):
        if not _skipped(header.kind, function):
            return function
    return None


# ---------------------------------------------------------------------------- cutting reports

@dataclass
class _Open:
    header: _Header
    start: int          # first line (prefix included)
    head: int           # the header line
    end: int            # one past the last line
    oopsed: bool = False
    ended: bool = False     # saw its end-of-trace marker
    in_trace: bool = False
    trace_done: bool = False
    closed: bool = False
    corrupted_reason: str = ""
    stray: int = 0
    extra_lines: list[int] = field(default_factory=list)  # a consequence panic further on


def _clean(console: str) -> list[str]:
    return [_PREFIX.sub("", line.rstrip("\r")) for line in console.splitlines()]


def _is_body(line: str) -> bool:
    return bool(_FRAME.match(line) or _RIP.match(line) or _REGS.match(line)
                or _CONTEXT_MARK.match(line) or _BODY.match(line) or _END_TRACE.match(line)
                or _OOPS.match(line))


def _prefix_start(lines: list[str], head: int, floor: int) -> int:
    """Where the report whose header is at `head` begins: its `cut here` line, and the
    page/vma/mm dump printed before it by VM_BUG_ON_*/VM_WARN_ON_*."""
    start = head
    for i in range(head - 1, max(floor, head - 12) - 1, -1):
        if lines[i] == _CUT_HERE:
            start = i
            break
        if _header(lines[i]) or _END_TRACE.match(lines[i]):
            break
    dumped = None
    for i in range(start - 1, max(floor, start - 4) - 1, -1):
        if _PAGE_DUMPED.match(lines[i]) or lines[i].startswith(("vma ", "flags: ", "def_flags: ")):
            dumped = i
            break
    if dumped is not None:
        for i in range(dumped, max(floor, dumped - 60) - 1, -1):
            if _DUMP_START.match(lines[i]):
                return i
            if _header(lines[i]) or _END_TRACE.match(lines[i]) or not lines[i]:
                break
    return start


_CONTINUES_TO_OOPS = {Kind.BUG, Kind.PAGE_FAULT, Kind.NULL_DEREF, Kind.STACK_GUARD,
                      Kind.LIST_CORRUPTION, Kind.PAGE_TABLE_CHECK, Kind.OTHER_BUG}
_HEADER_WINDOW = 80     # lines a report may print before its stack trace


def _cut(lines: list[str]) -> list[_Open]:
    reports: list[_Open] = []
    current: _Open | None = None

    def close(report: _Open, reason: str = ""):
        if report.closed:
            return
        report.closed = True
        # Trailing lines that are not part of a report (another CPU's or a task's output).
        while report.end - 1 > report.head and not _is_body(lines[report.end - 1]):
            report.end -= 1
        if reason and not report.corrupted_reason and not report.header.single_line:
            report.corrupted_reason = reason

    for i, line in enumerate(lines):
        header = _header(line)
        if header and current and not current.closed:
            if header.oops_header and current.header.kind in _CONTINUES_TO_OOPS \
                    and not current.oopsed and not current.ended:
                current.oopsed = True
                current.end = i + 1
                continue
            if _consequence(header, current):
                current.extra_lines.append(i)
                current.end = i + 1
                current.in_trace = current.trace_done = True   # the panic's own stack is ours
                continue
        if header and reports and _consequence(header, reports[-1]):
            # A consequence panic further on: it belongs to the report before it.
            reports[-1].extra_lines.append(i)
            continue
        if header:
            floor = 0
            if reports:
                floor = reports[-1].end if reports[-1].closed else reports[-1].head + 1
            start = _prefix_start(lines, i, floor)
            if current and not current.closed:
                current.end = min(current.end, max(start, current.head + 1))
                close(current, "" if _finished(current) else "interrupted by another report")
            current = _Open(header, start, i, i + 1, oopsed=header.oops_header)
            reports.append(current)
            if header.single_line:
                close(current)
            continue
        if current is None or current.closed:
            continue
        # Extend or close the open report with this line.
        if _END_TRACE.match(line):
            current.ended = True
            current.in_trace, current.trace_done = True, True
            current.end = i + 1
            if not current.oopsed and current.header.kind is not Kind.PANIC:
                close(current)
            continue
        if line.startswith("Call Trace:"):
            current.in_trace, current.trace_done = True, False
            current.end = i + 1
            continue
        if current.ended or current.trace_done:
            # After the trace: only the epilogue (RIP and registers again, the panic) or
            # another CPU's backtrace belongs to the report.
            if _RIP.match(line) or _REGS.match(line) or _BODY.match(line):
                current.end = i + 1
                if line.startswith(("Sending NMI", "NMI backtrace", "CPU: ")):
                    current.trace_done = False
                continue
            if (current.header.needs_end or current.oopsed) and not current.ended \
                    and current.stray < 5:
                current.stray += 1      # another CPU's line before the end marker
                continue
            close(current, "" if _finished(current) else "no end-of-trace marker")
            continue
        if current.in_trace:
            if _is_body(line):
                current.end = i + 1
                if line.strip() == "</TASK>":
                    current.trace_done = True
                continue
            if _MARKER.match(line):
                current.trace_done = True
                close(current)
                continue
            # A stray line inside a trace: another CPU's message printed meanwhile.
            current.end = i + 1
            continue
        # Before the trace: the report's own lines (message, dump, registers).
        if _MARKER.match(line) or i - current.head > _HEADER_WINDOW:
            close(current, "no stack trace")
            continue
        current.end = i + 1
    if current and not current.closed:
        close(current, "" if _finished(current) else "the log ends inside the report")
    return reports


def _consequence(header: _Header, report: _Open) -> bool:
    """Whether this header is a panic that `report` caused (panic_on_oops, softlockup_panic,
    hung_task_panic, panic_on_warn, ...)."""
    if header.kind is not Kind.PANIC:
        return False
    for message, kinds in _CONSEQUENCES:
        if message.match(header.detail):
            if kinds is None:
                return report.oopsed or report.header.fatal and report.header.kind is not Kind.PANIC
            return report.header.kind.value in kinds
    return False


def _finished(report: _Open) -> bool:
    if report.header.single_line:
        return True
    if report.header.needs_end or report.oopsed:
        return report.ended
    return report.trace_done


# ---------------------------------------------------------------------------- titles

def _detail(lines: list[str], report: _Open) -> str:
    header = report.header
    if header.detail:
        return header.detail
    body = lines[report.start:report.end]
    for line in body:
        match = _PAGE_DUMPED.match(line)
        if match:
            return match.group("reason").strip()
    # The message of a WARN(cond, msg) or a CHECK_DATA_CORRUPTION: between `cut here` and
    # the header (6.1 and 7.2 both print it first), or right after a WARNING line.
    between = lines[report.start:report.head]
    if between and between[0] == _CUT_HERE and len(between) > 1:
        return between[-1]
    after = lines[report.head + 1] if report.head + 1 < report.end else ""
    if header.warning and after and not _is_body(after) and not _header(after):
        return after
    return ""


def _title(lines: list[str], report: _Open, guilty: str | None, detail: str) -> tuple[Kind, str]:
    header = report.header
    kind, phrase = header.kind, header.phrase
    text = "\n".join(lines[report.start:report.end])
    if kind is Kind.LIST_CORRUPTION or (kind in (Kind.WARNING, Kind.BUG)
                                        and re.match(r"list_(?:add|del) ", detail)):
        kind = Kind.LIST_CORRUPTION
        found = re.search(r"\b(list_(?:add|del)) (?:corruption|double add)", text)
        phrase = f"{found.group(1)} corruption" if found else "list corruption"
    elif kind is Kind.BAD_PAGE_STATE and detail:
        phrase = f"BUG: Bad page state ({_sanitize(detail)})"
    if guilty:
        return kind, f"{phrase} in {guilty}"
    if header.file and kind in (Kind.BUG, Kind.WARNING):
        return kind, f"{phrase} at {header.file}"     # no function (a cut log): the file
    return kind, phrase


def _finish(lines: list[str], report: _Open) -> ConsoleReport:
    body_lines = list(range(report.start, report.end)) + \
        [i for i in report.extra_lines if i >= report.end]
    body = [lines[i] for i in body_lines]
    head_lines = lines[report.start:report.end]
    guilty = _guilty(head_lines, report.header)
    detail = _detail(lines, report)
    kind, title = _title(lines, report, guilty, detail)
    return ConsoleReport(kind=kind, title=title, guilty_function=guilty, text="\n".join(body),
                         corrupted=bool(report.corrupted_reason),
                         corrupted_reason=report.corrupted_reason, detail=detail,
                         line=report.start, fatal=report.oopsed or report.header.fatal
                         or bool(report.extra_lines))


# ---------------------------------------------------------------------------- incidents

_STALL_PRIORITY = {Kind.HARD_LOCKUP: 0, Kind.SOFT_LOCKUP: 1, Kind.RCU_STALL: 2}


def _merge(reports: list[ConsoleReport]) -> list[ConsoleReport]:
    # A lockup and the RCU stall it causes are one incident; their timers race, so the title
    # is the most specific kind's whichever came first.
    stalls: dict[str | None, list[int]] = {}
    for index, report in enumerate(reports):
        if report.kind in _STALL_PRIORITY and report.guilty_function:
            stalls.setdefault(report.guilty_function, []).append(index)
    drop = set()
    merged = list(reports)
    for indices in stalls.values():
        if len(indices) < 2:
            continue
        best = min(indices, key=lambda i: (_STALL_PRIORITY[reports[i].kind], i))
        first = indices[0]
        members = [reports[i] for i in indices]
        merged[first] = replace(reports[best], text="\n\n".join(m.text for m in members),
                                line=reports[first].line, count=len(members),
                                corrupted=all(m.corrupted for m in members),
                                corrupted_reason=reports[best].corrupted_reason
                                if all(m.corrupted for m in members) else "",
                                fatal=any(m.fatal for m in members))
        drop.update(i for i in indices if i != first)
    merged = [report for i, report in enumerate(merged) if i not in drop]
    # Repeats of the same report (a WARN_ON in a loop, a task reported hung again) count once.
    out: list[ConsoleReport] = []
    seen: dict[str, int] = {}
    for report in merged:
        if report.title in seen:
            index = seen[report.title]
            kept = out[index]
            shown = report if kept.corrupted and not report.corrupted else kept
            out[index] = replace(shown, line=kept.line, count=kept.count + report.count,
                                 fatal=kept.fatal or report.fatal)
            continue
        seen[report.title] = len(out)
        out.append(report)
    return out


# ---------------------------------------------------------------------------- API

def find_reports(console: str) -> list[ConsoleReport]:
    """Every kernel report in a console log, one per incident, in the order they began."""
    lines = _clean(console)
    cut = _cut(lines)
    reports = [_finish(lines, report) for report in cut]
    covered = set()
    for report in cut:
        covered.update(range(report.start, report.end))
    reports += _lone_page_dumps(lines, covered)
    reports.sort(key=lambda report: report.line)
    return _merge(reports)


def _lone_page_dumps(lines: list[str], covered: set[int]) -> list[ConsoleReport]:
    """A dump_page() that no report encloses: its reason is the finding (unless the caller
    only informs, as memory offlining does)."""
    found = []
    for i, line in enumerate(lines):
        match = _PAGE_DUMPED.match(line)
        if not match or i in covered:
            continue
        reason = match.group("reason").strip()
        if _INFORMATIONAL_DUMP.match(reason):
            continue
        start = i
        for j in range(i - 1, max(-1, i - 40), -1):
            if j in covered:
                break
            if _DUMP_START.match(lines[j]):
                start = j
                break
        found.append(ConsoleReport(kind=Kind.PAGE_DUMP,
                                   title=f"page dumped because: {_sanitize(reason)}",
                                   guilty_function=None, text="\n".join(lines[start:i + 1]),
                                   detail=reason, line=start))
    return found


def slice_program(console: str, serial: int) -> str:
    """The part of a console log from program `serial`'s start marker to its end marker
    (or to the end of the log when the program never ended: the guest died in it).
    Empty when the program's start marker is not in the log."""
    lines = console.splitlines(keepends=True)
    begin = None
    for index, line in enumerate(lines):
        match = _MARKER.match(_PREFIX.sub("", line.rstrip("\r\n")))
        if not match or int(match.group("serial")) != serial:
            continue
        if match.group("what") == "start":
            begin = index
        elif begin is not None:
            return "".join(lines[begin:index + 1])
    return "" if begin is None else "".join(lines[begin:])
