"""move_pages and mbind as the model states them (reference/numa.py), checked against 7.2.13,
6.12.117 and 6.1.192 by tests/test_vm_model_numa.py."""

import errno

from test_model_support import (
    assert_accepts, assert_rejects, dev, ok, patterns, program, replaced, trace, wrote, zeros,
)

from harness.prog import OpResult
from reference import check, expected

ENOENT, EFAULT, EACCES, ENODEV, EINVAL = (-errno.ENOENT, -errno.EFAULT, -errno.EACCES,
                                          -errno.ENODEV, -errno.EINVAL)


def status(*values: int, err: int = 0) -> OpResult:
    return OpResult(errno=err, node_status=tuple(values))


def allowed_status(prog, op_index: int, release: str = "7.2.13"):
    (expect,) = expected(prog, release)[op_index]
    return expect.node_status


# ---------------------------------------------------------------- do_pages_stat

QUERY = """
    region a pages=5
    p0 map a[0:4]
    p0 write a[0:1] seed=1
    p0 read a[1:2]
    p0 write a[3:4] seed=2
    p0 madvise a[3:4] pageout
    p0 move_pages a[0:5]
"""


def test_a_query_reports_the_node_of_a_folio_and_an_error_for_everything_else():
    # do_pages_stat_array: folio_nid; the zero page -EFAULT; pte_none -ENOENT; no VMA -EFAULT
    prog = program(QUERY)
    assert allowed_status(prog, 5) == ((0,), (EFAULT,), (ENOENT,), (ENOENT,), (EFAULT,))


def test_on_6_1_follow_page_dump_makes_an_unfaulted_page_efault():
    # 6.1 do_pages_stat_array: follow_page(FOLL_DUMP) -> no_page_table -> -EFAULT
    prog = program(QUERY)
    assert allowed_status(prog, 5, "6.1.192") == ((0,), (EFAULT,), (EFAULT,), (ENOENT,),
                                                  (EFAULT,))


def test_device_private_and_device_exclusive_entries_have_no_node():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:2]
        p0 exclusive d0 a[2:4]
        p0 move_pages a[0:4] 1
    """)
    assert allowed_status(prog, 5) == ((ENOENT,),) * 4


# ---------------------------------------------------------------- do_pages_move

def test_a_page_mapped_once_moves_and_the_mirror_loses_it_and_the_next_page():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:4]
        p0 move_pages a[1:2] 1
        p0 move_pages a[0:4]
        p0 dev_read d0 a[0:4]
    """)
    data = patterns(prog, 1, "a", 0, 4)
    # try_to_migrate_one's MMU_NOTIFY_CLEAR erases a[1] and, by the dmirror_do_update
    # quirk, a[2]: the device read faults once
    results = [ok(), wrote(4), ok(), dev(4, 1, data), status(1), status(0, 1, 0, 0),
               dev(4, 1, data)]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 6, dev(4, 0, data)), 6, "faults")


def test_a_page_already_on_the_node_stays_and_the_mirror_keeps_it():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]
        p0 move_pages a[0:2] 0
        p0 dev_read d0 a[0:2]
    """)
    data = patterns(prog, 1, "a", 0, 2)
    assert_accepts(prog, ok(), wrote(2), ok(), dev(2, 1, data), status(0, 0), dev(2, 0, data))


def test_a_page_shared_after_fork_is_eacces():
    # __add_folio_for_migration: folio_maybe_mapped_shared without MPOL_MF_MOVE_ALL
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 fork p1
        p1 write a[1:2] seed=2
        p0 move_pages a[0:2] 1
    """)
    assert allowed_status(prog, 4) == ((EACCES,), (1,))


def test_a_node_without_memory_fails_before_any_status_is_written():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 move_pages a[0:2] 2
    """)
    assert_accepts(prog, ok(), wrote(2), status(EINVAL, EINVAL, err=errno.ENODEV))
    assert_rejects(prog, [ok(), wrote(2), status(2, 2)], 2, "errno")


def test_migration_keeps_the_content():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=7
        p0 move_pages a[0:1] 1
        p0 read a[0:1]
    """)
    assert_accepts(prog, ok(), wrote(1), status(1),
                   OpResult(pages=patterns(prog, 7, "a", 0, 1)))


# ---------------------------------------------------------------- mbind

def test_mbind_moves_pages_mapped_once_and_later_faults_allocate_on_the_node():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:2] seed=1
        p0 mbind a[0:4] 1
        p0 write a[2:4] seed=2
        p0 move_pages a[0:4]
    """)
    assert allowed_status(prog, 4) == ((1,),) * 4


def test_mbind_over_a_hole_is_efault_and_changes_nothing():
    # queue_pages_test_walk: no MPOL_MF_DISCONTIG_OK -> -EFAULT before mbind_range
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 mbind a[0:4] 1
        p0 move_pages a[0:2]
    """)
    assert_accepts(prog, ok(), wrote(2), OpResult(errno=errno.EFAULT), status(0, 0))


def test_mbind_to_a_node_without_memory_is_einval():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 mbind a[0:1] 3
    """)
    assert_accepts(prog, ok(), OpResult(errno=errno.EINVAL))


def test_mbind_leaves_shared_pages_where_they_are():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 fork p1
        p0 mbind a[0:1] 1
        p0 move_pages a[0:1]
    """)
    assert allowed_status(prog, 4) == ((0,),)


def test_a_policy_splits_the_vma_and_the_split_fires_the_2mib_notifier():
    # mbind_range -> vma_modify_policy splits a[0:512] at 5 and 10: vma_adjust_trans_huge
    # invalidates the whole aligned 2 MiB (docs/findings.md #2), so every mirrored page
    # there is faulted again
    prog = program("""
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:20] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:20]
        p0 mbind a[5:10] 1
        p0 dev_read d0 a[15:20]
    """)
    assert_accepts(prog, ok(), wrote(20), ok(), dev(20, 1, patterns(prog, 1, "a", 0, 20)),
                   ok(), dev(5, 1, patterns(prog, 1, "a", 15, 20)))


def test_a_device_page_comes_back_to_the_node_of_the_policy():
    # dmirror_devmem_fault_alloc_and_copy: alloc_page_vma uses the VMA's policy
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:2]
        p0 mbind a[0:2] 1
        p0 read a[0:1]
        p0 migrate_to_sys d0 a[1:2]
        p0 move_pages a[0:2]
    """)
    assert allowed_status(prog, 7) == ((1,), (1,))


def test_a_copy_that_may_or_may_not_happen_leaves_the_node_open_until_a_query():
    # mbind leaves the shared page on node 0; once the child is gone it is mapped once but
    # not exclusive: wp_can_reuse_anon_folio may reuse it (node 0) or wp_page_copy may
    # allocate by the VMA's policy (node 1): both are allowed, and the model learns which
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 fork p1
        p0 mbind a[0:1] 1
        p1 exit
        p0 write a[0:1] seed=2
        p0 move_pages a[0:1]
        p0 move_pages a[0:1]
    """)
    head = [ok(), wrote(1), ok(), ok(), ok(), wrote(1)]
    for node in (0, 1):
        assert_accepts(prog, *head, status(node), status(node))
    verdict = check(prog, trace(*head, status(0), status(1)))
    assert [d.field for d in verdict.divergences] == ["node_status[0]"]


def test_zero_pages_are_not_moved_by_mbind():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 read a[0:1]
        p0 mbind a[0:1] 1
        p0 move_pages a[0:1] 1
        p0 read a[0:1]
    """)
    assert_accepts(prog, ok(), OpResult(pages=zeros(1)), ok(), status(EFAULT),
                   OpResult(pages=zeros(1)))
