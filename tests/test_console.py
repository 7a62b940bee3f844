"""The crash oracle on real kernel consoles: every report kind, its stable title, one report
per incident, and no report for a clean boot.

The logs under tests/data/consoles/<version>/ were captured from the project's kernels with
LKDTM (tests/data/consoles/capture.py); those under synthetic/ are the memory-management
reports LKDTM cannot provoke, written from the kernel's own printk formats in the layout of
the captured ones (see tests/data/consoles/README.md)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from harness.vm.console import Kind, find_reports, slice_program

CONSOLES = Path(__file__).resolve().parent / "data" / "consoles"

# LKDTM crash type -> (kind, title), the same on 6.1 and 7.2 although their formats differ.
LKDTM = {
    "WARNING": (Kind.WARNING, "WARNING in lkdtm_WARNING"),
    "WARNING_MESSAGE": (Kind.WARNING, "WARNING in lkdtm_WARNING_MESSAGE"),
    "UNSET_SMEP": (Kind.WARNING, "WARNING in native_write_cr4"),
    "REFCOUNT_INC_OVERFLOW": (Kind.WARNING, "WARNING: refcount bug in lkdtm_REFCOUNT_INC_OVERFLOW"),
    "REFCOUNT_DEC_ZERO": (Kind.WARNING, "WARNING: refcount bug in lkdtm_REFCOUNT_DEC_ZERO"),
    "CORRUPT_LIST_ADD": (Kind.LIST_CORRUPTION, "list_add corruption in lkdtm_CORRUPT_LIST_ADD"),
    "CORRUPT_LIST_DEL": (Kind.LIST_CORRUPTION, "list_del corruption in lkdtm_CORRUPT_LIST_DEL"),
    "BUG": (Kind.BUG, "kernel BUG in lkdtm_BUG"),
    "EXCEPTION": (Kind.NULL_DEREF, "BUG: kernel NULL pointer dereference in lkdtm_EXCEPTION"),
    "ACCESS_NULL": (Kind.NULL_DEREF, "BUG: kernel NULL pointer dereference in lkdtm_ACCESS_NULL"),
    "EXEC_NULL": (Kind.NULL_DEREF, "BUG: kernel NULL pointer dereference in execute_location"),
    "WRITE_KERN": (Kind.PAGE_FAULT, "BUG: unable to handle page fault in lkdtm_WRITE_KERN"),
    "WRITE_RO": (Kind.PAGE_FAULT, "BUG: unable to handle page fault in lkdtm_WRITE_RO"),
    "ACCESS_USERSPACE": (Kind.PAGE_FAULT, "BUG: unable to handle page fault in lkdtm_ACCESS_USERSPACE"),
    "EXEC_DATA": (Kind.PAGE_FAULT, "BUG: unable to handle page fault in data_area"),
    # The return address is overwritten: no reliable frame names a culprit.
    "CORRUPT_STACK": (Kind.PAGE_FAULT, "BUG: unable to handle page fault"),
    "EXHAUST_STACK": (Kind.STACK_GUARD, "BUG: TASK stack guard page was hit in recursive_loop"),
    "PANIC": (Kind.PANIC, "kernel panic: dumptest in lkdtm_PANIC"),
    "SOFTLOCKUP": (Kind.SOFT_LOCKUP, "BUG: soft lockup in lkdtm_SOFTLOCKUP"),
    "HUNG_TASK": (Kind.HUNG_TASK, "INFO: task hung in lkdtm_HUNG_TASK"),
}
ONLY_72 = {
    "BUG_IN_HARDIRQ": (Kind.BUG, "kernel BUG in bug_in_hardirq"),
    "PANIC_IN_HARDIRQ": (Kind.PANIC, "kernel panic: from hard IRQ context in panic_in_hardirq"),
    # Without slab debugging the double free is found by dereferencing the freelist.
    "SLAB_FREE_DOUBLE": (Kind.NULL_DEREF, "BUG: kernel NULL pointer dereference in lkdtm_SLAB_FREE_DOUBLE"),
    # LKDTM returns holding a spinlock; the task then loops in exit_mmap.
    "SPINLOCKUP": (Kind.SOFT_LOCKUP, "BUG: soft lockup in exit_mmap"),
}
ONLY_61 = {
    # 6.1 is built without preemption: a plain loop in the kernel is a soft lockup.
    "LOOP": (Kind.SOFT_LOCKUP, "BUG: soft lockup in lkdtm_LOOP"),
    # No hard-lockup detector under TCG; this time the loop ran on CPU 1, so CPU 0 kept time
    # and saw the RCU stall (with an NMI backtrace of CPU 1).
    "HARDLOCKUP": (Kind.RCU_STALL, "INFO: rcu detected stall in lkdtm_HARDLOCKUP"),
}
# A few on 6.12 (the kernel between the two): the same titles again.
ON_612 = ["WARNING", "WARNING_MESSAGE", "CORRUPT_LIST_ADD", "REFCOUNT_INC_OVERFLOW", "BUG", "EXCEPTION"]
SYNTHETIC = {
    "7.2-BAD_PAGE_STATE": (Kind.BAD_PAGE_STATE,
                           "BUG: Bad page state (nonzero mapcount) in zap_page_range_single_batched"),
    "7.2-BAD_PAGE_MAP": (Kind.BAD_PAGE_MAP, "BUG: Bad page map in __zap_vma_range"),
    "7.2-BAD_RSS_COUNTER": (Kind.BAD_RSS_COUNTER, "BUG: Bad rss-counter state"),
    "7.2-VM_BUG_ON_FOLIO": (Kind.BUG, "kernel BUG in make_device_exclusive"),
    "7.2-PAGE_TABLE_CHECK": (Kind.PAGE_TABLE_CHECK, "BUG: page table check in restore_exclusive_pte"),
    "7.2-GENERAL_PROTECTION": (Kind.GENERAL_PROTECTION, "general protection fault in dmirror_devmem_free"),
    # An RCU stall and the soft lockup of the same loop: one incident.
    "7.2-RCU_STALL": (Kind.SOFT_LOCKUP, "BUG: soft lockup in dmirror_fault"),
}
# An own build of 7.2 (harness/kernel/extra_oracles.config: the buddy hard-lockup detector).
# CPU 1's watchdog sees CPU 0 take no hrtimer interrupts and sends it an NMI for its
# backtrace; the lockup repeats every watchdog period: one report.
OWN_BUILD_72 = {
    "HARDLOCKUP": (Kind.HARD_LOCKUP, "BUG: hard lockup in lkdtm_HARDLOCKUP"),
}
CASES = [("7.2", name, *expected) for name, expected in {**LKDTM, **ONLY_72}.items()] + \
        [("7.2-buddy", name, *expected) for name, expected in OWN_BUILD_72.items()] + \
        [("6.1", name, *expected) for name, expected in {**LKDTM, **ONLY_61}.items()] + \
        [("6.12", name, *LKDTM[name]) for name in ON_612] + \
        [("synthetic", name, *expected) for name, expected in SYNTHETIC.items()]


def console(folder: str, name: str) -> str:
    return (CONSOLES / folder / f"{name}.log").read_text()


def only_report(text: str):
    reports = find_reports(text)
    assert len(reports) == 1, [report.title for report in reports]
    return reports[0]


@pytest.mark.parametrize("folder,name,kind,title", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_report_gets_its_kind_and_stable_title(folder, name, kind, title):
    report = only_report(console(folder, name))
    assert (report.kind, report.title) == (kind, title)
    assert not report.corrupted, report.corrupted_reason
    if " in " in title:
        assert report.guilty_function == title.rsplit(" in ", 1)[1]
    assert not re.search(r"^\[\s*\d+\.\d+\]", report.text, re.M)  # timestamps stripped


@pytest.mark.parametrize("version", ["6.1", "6.12", "7.2", "7.2-buddy"])
def test_a_clean_boot_is_not_a_finding(version):
    boot = console(version, "boot")
    assert "Linux version" in boot and "hmmfuzz" not in boot
    assert find_reports(boot) == []


@pytest.mark.parametrize("name", ["HARDLOCKUP", "LOOP"])
def test_lkdtm_types_7_2_stays_silent_on_under_tcg_give_no_report(name):
    # HARDLOCKUP: no hard-lockup detector is configured (the perf NMI watchdog needs a PMU,
    # which TCG does not emulate), and the CPU that stops taking interrupts does the
    # timekeeping, so not even an RCU stall is noticed. LOOP: 7.2 is preemptible.
    assert find_reports(console("7.2", name)) == []


# ---------------------------------------------------------------------------- one report per incident

def test_an_oops_and_the_panic_it_causes_are_one_report():
    for version in ("6.1", "7.2"):
        report = only_report(console(version, "BUG"))
        assert report.fatal
        assert report.text.startswith("------------[ cut here ]------------")
        assert "Kernel panic - not syncing: Fatal exception" in report.text
        assert "lkdtm: Performing direct entry" not in report.text


def test_a_warning_is_its_trace_and_no_more():
    report = only_report(console("7.2", "REFCOUNT_INC_OVERFLOW"))
    lines = report.text.splitlines()
    assert lines[0] == "------------[ cut here ]------------"
    assert lines[1] == "refcount_t: saturated; leaking memory." == report.detail
    assert lines[-1].startswith("---[ end trace")
    assert not report.fatal


def test_a_warning_then_a_bug_are_two_reports_in_order():
    reports = find_reports(console("7.2", "WARNING") + console("7.2", "BUG"))
    assert [r.title for r in reports] == ["WARNING in lkdtm_WARNING", "kernel BUG in lkdtm_BUG"]
    assert [r.fatal for r in reports] == [False, True]
    assert "kernel BUG" not in reports[0].text and "lkdtm_WARNING" not in reports[1].text


def test_a_repeated_report_counts_once():
    report = only_report(console("6.1", "WARNING") * 3)
    assert report.count == 3
    assert only_report(console("7.2", "HUNG_TASK")).count == 2   # reported at 20 s and 40 s


def _blocks(text: str) -> list[str]:
    """The console cut before each line that starts a stall report."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines)
              if re.search(r"rcu: INFO:|watchdog: BUG: soft lockup", line)]
    return ["".join(lines[a:b]) for a, b in zip([0] + starts, starts + [len(lines)])]


def test_a_soft_lockup_and_its_rcu_stall_are_one_incident_whichever_comes_first():
    head, rcu, *lockups = _blocks(console("7.2", "SOFTLOCKUP"))
    for text in (head + rcu + "".join(lockups), head + "".join(lockups) + rcu):
        report = only_report(text)
        assert report.title == "BUG: soft lockup in lkdtm_SOFTLOCKUP" and report.count == 3
    alone = only_report(head + rcu)
    assert (alone.kind, alone.title) == (Kind.RCU_STALL, "INFO: rcu detected stall in lkdtm_SOFTLOCKUP")


def test_a_stall_is_titled_by_the_bottom_of_the_loop_not_where_the_cpu_was_caught():
    # The three samples of this stall stop in KCOV's hook, in __pte_offset_map and in
    # pte_offset_map_lock; the function looping over them is the same in each.
    head, rcu, *lockups = _blocks(console("7.2", "SPINLOCKUP"))
    assert "__sanitizer_cov_trace_pc" in rcu
    titles = {only_report(head + block).guilty_function for block in [rcu, *lockups]}
    assert titles == {"exit_mmap"}
    head, rcu, lockup = _blocks(console("synthetic", "7.2-RCU_STALL"))
    assert only_report(rcu).title == "INFO: rcu detected stall in dmirror_fault"
    assert only_report(lockup).title == "BUG: soft lockup in dmirror_fault"


def test_a_consequence_panic_further_on_still_belongs_to_its_oops():
    lines = console("7.2", "EXCEPTION").splitlines()
    panic = next(i for i, line in enumerate(lines) if "Kernel panic - not syncing" in line)
    text = "\n".join(lines[:panic] + ["[    9.000000] virtio: some driver chatter"] * 5 + lines[panic:])
    report = only_report(text)
    assert report.title == "BUG: kernel NULL pointer dereference in lkdtm_EXCEPTION"
    assert "Fatal exception" in report.text and "driver chatter" not in report.text


def test_a_panic_belongs_only_to_the_report_that_can_cause_it():
    lockup = console("7.2", "SOFTLOCKUP") + "[   80.000000] Kernel panic - not syncing: softlockup: hung tasks\n"
    report = only_report(lockup)
    assert report.kind is Kind.SOFT_LOCKUP and report.fatal
    # init dying after a mere WARNING is not that WARNING's doing.
    text = console("7.2", "WARNING") + \
        "[    9.000000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
    assert [r.kind for r in find_reports(text)] == [Kind.WARNING, Kind.PANIC]


def test_a_panic_of_its_own_is_a_finding():
    text = "[    5.000000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
    assert only_report(text).kind is Kind.PANIC   # no report before it to belong to
    text = "[    5.000000] Kernel panic - not syncing: System is deadlocked on memory\n"
    assert only_report(text).title == "kernel panic: System is deadlocked on memory"


# ---------------------------------------------------------------------------- the page dump and its report

def test_a_vm_bug_on_folio_report_begins_with_its_page_dump():
    report = only_report(console("synthetic", "7.2-VM_BUG_ON_FOLIO"))
    assert report.text.startswith("page: refcount:3 mapcount:1")
    assert report.detail == "VM_BUG_ON_FOLIO(!folio_test_anon(folio))"
    assert "hmmfuzz: program" not in report.text


def test_bad_page_reports_keep_their_dump_and_reason():
    state = only_report(console("synthetic", "7.2-BAD_PAGE_STATE"))
    assert state.detail == "nonzero mapcount" and "raw: 0100000000000000" in state.text
    assert state.text.splitlines()[-1] == "Disabling lock debugging due to kernel taint"
    page_map = only_report(console("synthetic", "7.2-BAD_PAGE_MAP"))
    assert "addr:00007ffff7a02000 vm_flags:00100073" in page_map.text
    rss = only_report(console("synthetic", "7.2-BAD_RSS_COUNTER"))
    assert rss.count == 2 and rss.guilty_function is None


def test_a_page_dump_alone_is_a_finding_unless_it_only_informs():
    dump = ("[    3.0] page: refcount:1 mapcount:0 mapping:0000000000000000 index:0x0 pfn:0x4a47b\n"
            "[    3.0] flags: 0x100000000000000(node=1|zone=1)\n"
            "[    3.0] raw: 0100000000000000 dead000000000100 dead000000000122 0000000000000000\n"
            "[    3.0] page dumped because: {}\n")
    report = only_report(dump.format("still mapped when deleted"))
    assert (report.kind, report.title) == (Kind.PAGE_DUMP, "page dumped because: still mapped when deleted")
    assert report.text.startswith("page: refcount:1")
    assert find_reports(dump.format("isolation failed")) == []


def test_other_bugs_are_titled_by_what_they_say_and_the_caller_of_the_primitive():
    frames = ("[    1.1] CPU: 0 UID: 0 PID: 46 Comm: init Not tainted 7.2.13 #4 PREEMPTLAZY\n"
              "[    1.2] Call Trace:\n[    1.3]  <TASK>\n[    1.4]  dump_stack_lvl+0x65/0x9c\n{}"
              "[    1.9]  </TASK>\n")
    atomic = "[    1.0] BUG: scheduling while atomic: init/46/0x00000002\n" + frames.format(
        "[    1.5]  __schedule_bug+0x5a/0x70\n[    1.6]  __schedule+0x3fe/0x439\n"
        "[    1.7]  schedule+0x2e/0x47\n[    1.8]  dmirror_fault+0x22/0x24\n")
    sleeping = ("[    2.0] BUG: sleeping function called from invalid context at mm/memory.c:6123\n"
                "[    2.0] in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 46, name: init\n") + \
        frames.format("[    1.5]  __might_resched+0x5a/0x70\n[    1.6]  __might_fault+0x3f/0x49\n"
                      "[    1.7]  _copy_to_user+0x2e/0x47\n[    1.8]  dmirror_do_read+0x22/0x24\n")
    counter = "[    3.0] BUG: non-zero pgtables_bytes on freeing mm: -4096\n[    3.1] unrelated\n"
    reports = find_reports(atomic + sleeping + counter)
    assert [(r.kind, r.title, r.corrupted) for r in reports] == [
        (Kind.OTHER_BUG, "BUG: scheduling while atomic in dmirror_fault", False),
        (Kind.OTHER_BUG, "BUG: sleeping function called from invalid context in dmirror_do_read", False),
        (Kind.OTHER_BUG, "BUG: non-zero pgtables_bytes on freeing mm", False)]


# ---------------------------------------------------------------------------- formats and stability

def test_6_1_and_7_2_general_protection_fault_headers_agree():
    text = console("synthetic", "7.2-GENERAL_PROTECTION")
    old = text.replace("Oops: general protection fault", "general protection fault") \
              .replace("0000 [#1] SMP", "0000 [#1] PREEMPT SMP").replace("UID: 0 ", "")
    assert only_report(old).title == only_report(text).title == \
        "general protection fault in dmirror_devmem_free"


def test_list_corruption_that_bugs_is_titled_as_the_one_that_warns():
    # With CONFIG_BUG_ON_DATA_CORRUPTION the check BUG()s instead of WARNing.
    text = console("6.1", "BUG").replace("kernel BUG at drivers/misc/lkdtm/bugs.c:78!",
                                         "list_del corruption. prev->next should be ff11, but was 0\n"
                                         "[    2.791873] kernel BUG at lib/list_debug.c:62!")
    text = text.replace("RIP: 0010:lkdtm_BUG+0x9/0xb", "RIP: 0010:__list_del_entry_valid_or_report+0x9/0xb")
    text = text.replace(" lkdtm_do_action+", " lkdtm_CORRUPT_LIST_DEL+0x1/0x2\n lkdtm_do_action+")
    report = only_report(text)
    assert (report.kind, report.title) == (Kind.LIST_CORRUPTION, "list_del corruption in lkdtm_CORRUPT_LIST_DEL")


def _scramble(text: str, seed: int) -> str:
    """The same report as another run prints it: other timestamps, PIDs, CPUs, addresses,
    register values, durations and counts."""
    rng = random.Random(seed)
    text = re.sub(r"\[\s*\d+\.\d+\]", lambda m: f"[{rng.uniform(0, 999):12.6f}]", text)
    text = re.sub(r"\b[0-9a-f]{8,16}\b", lambda m: "".join(rng.choice("0123456789abcdef")
                                                            for _ in m.group(0)), text)
    text = re.sub(r"(PID: |pid:|Pid:|CPU#|CPU: |cpu |init:|init/|for |count: )\d+",
                  lambda m: m.group(1) + str(rng.randrange(1, 300)), text)
    return text


@pytest.mark.parametrize("folder,name,kind,title", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_titles_do_not_change_between_runs(folder, name, kind, title):
    text = console(folder, name)
    for seed in range(3):
        assert [r.title for r in find_reports(_scramble(text, seed))] == [title]


def test_titles_carry_nothing_that_varies():
    for _, name, _, title in CASES:
        assert not re.search(r"0x|\+|\d\d|CPU#|\[|pid|PID|init:", title), (name, title)


# ---------------------------------------------------------------------------- cut logs

def test_a_log_cut_inside_a_report_is_marked_corrupted_but_still_titled():
    lines = console("7.2", "BUG").splitlines()
    cut = next(i for i, line in enumerate(lines) if "vfs_write" in line)
    report = only_report("\n".join(lines[:cut]))
    assert report.corrupted and report.corrupted_reason == "the log ends inside the report"
    assert report.title == "kernel BUG in lkdtm_BUG"
    header_only = only_report("\n".join(lines[:4]))      # cut before the registers
    assert header_only.corrupted and header_only.guilty_function is None
    assert header_only.title == "kernel BUG at drivers/misc/lkdtm/bugs.c"
    assert header_only.text.splitlines()[-1] == "Oops: invalid opcode: 0000 [#1] SMP"


def test_a_warning_cut_before_its_end_marker_is_corrupted():
    text = console("6.1", "WARNING")
    text = text[:text.index("---[ end trace")]
    report = only_report(text)
    assert report.corrupted and report.title == "WARNING in lkdtm_WARNING"


def test_a_report_interrupted_by_another_is_corrupted():
    lines = console("7.2", "WARNING").splitlines()
    half = next(i for i, line in enumerate(lines) if "Call Trace:" in line)
    reports = find_reports("\n".join(lines[:half + 2]) + "\n" + console("7.2", "BUG"))
    assert [r.title for r in reports] == ["WARNING in lkdtm_WARNING", "kernel BUG in lkdtm_BUG"]
    assert reports[0].corrupted and not reports[1].corrupted


# ---------------------------------------------------------------------------- program markers

def test_slice_program_cuts_one_programs_part_of_the_console():
    log = ("[    1.0] hmmfuzz: program 1 start\n[    1.1] one\n[    1.2] hmmfuzz: program 1 end\n"
           "[    2.0] hmmfuzz: program 2 start\n" + console("7.2", "BUG"))
    assert slice_program(log, 1).splitlines()[1] == "[    1.1] one"
    assert slice_program(log, 1).rstrip().endswith("hmmfuzz: program 1 end")
    two = slice_program(log, 2)           # the guest died in it: to the end of the log
    assert [r.title for r in find_reports(two)] == ["kernel BUG in lkdtm_BUG"]
    assert find_reports(slice_program(log, 1)) == [] and slice_program(log, 3) == ""


def test_program_markers_end_a_report_and_are_not_part_of_it():
    report = only_report(console("synthetic", "7.2-BAD_PAGE_MAP"))
    assert "hmmfuzz" not in report.text and report.text.endswith("</TASK>")
