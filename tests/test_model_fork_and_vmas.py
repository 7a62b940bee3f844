"""fork, mmap, munmap, mprotect: what the VMAs and page tables make observable."""

from test_model_support import (
    EEXIST, ENOMEM, SEGV, assert_accepts, assert_rejects, cpu, dev, err, ok, pattern,
    patterns, program, replaced, snap, wrote, zeros,
)

from reference import check, uapi
from test_model_support import trace

ZERO_READ = uapi.PROT_ZERO | uapi.PROT_READ


def test_map_over_a_mapped_page_is_eexist():
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 map a[1:3]   # MAP_FIXED_NOREPLACE
        p0 map a[2:4]
    """)
    assert_accepts(prog, ok(), err(EEXIST), ok())
    assert_rejects(prog, [ok(), ok(), ok()], 1, "errno", "EEXIST")


def test_mprotect_over_a_hole_applies_up_to_the_hole_then_fails_with_enomem():
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 map a[3:4]
        p0 mprotect a[0:4] r      # do_mprotect_pkey: a[0:2] changes, then the hole -> ENOMEM
        p0 write a[0:1] seed=1
        p0 write a[3:4] seed=1
        p0 mprotect a[2:4] r      # starts in the hole: nothing changes
    """)
    assert_accepts(prog, ok(), ok(), err(ENOMEM), cpu(SEGV), wrote(1), err(ENOMEM))


def test_munmap_drops_pages_and_mirror_entries():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]
        p0 munmap a[1:2]
        p0 read a[0:2]
        p0 map a[1:2]
        p0 dev_read d0 a[0:2]     # a[1] was invalidated by the unmap, a[0] was not
    """)
    data = patterns(prog, 1, "a", 0, 2)
    assert_accepts(prog, ok(), wrote(2), ok(), dev(2, 1, data), ok(),
                   cpu(data[0], SEGV), ok(), dev(2, 1, (data[0], zeros(1)[0])))


def test_fork_copies_page_tables_only_for_vmas_with_an_anon_vma():
    # vma_needs_copy: a VMA that only ever had the zero page mapped has no anon_vma, so the
    # child starts with empty page tables there, while in a VMA with an anon_vma the zero page
    # PTE is copied.
    prog = program("""
        region a pages=2
        region b pages=2
        p0 map a[0:2]
        p0 map b[0:2]
        p0 write a[0:1] seed=1
        p0 read a[1:2]
        p0 read b[0:2]
        p0 fork p1
        p1 open d1 dmirror0
        p1 snapshot d1 a[0:2]
        p1 snapshot d1 b[0:2]
    """)
    good = [ok(), ok(), wrote(1), cpu(*zeros(1)), cpu(*zeros(2)), ok(), ok(),
            snap(uapi.PROT_READ, ZERO_READ), snap(uapi.PROT_NONE, uapi.PROT_NONE)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 8, snap(ZERO_READ, ZERO_READ)), 8, "snapshot[0]",
                   "0x00 (NONE)")


def test_an_adjacent_mapping_merges_into_a_vma_with_an_anon_vma():
    # vma_merge_new_range: the new range joins a[0:2], whose anon_vma it then shares, so the
    # zero page read at a[3] is copied by fork.
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 write a[0:1] seed=1
        p0 map a[2:4]
        p0 read a[3:4]
        p0 fork p1
        p1 open d1 dmirror0
        p1 snapshot d1 a[2:4]
    """)
    assert_accepts(prog, ok(), wrote(1), ok(), cpu(*zeros(1)), ok(), ok(),
                   snap(uapi.PROT_NONE, ZERO_READ))


def test_fork_invalidates_only_the_parents_vmas_with_an_anon_vma():
    prog = program("""
        region a pages=1
        region b pages=1
        p0 map a[0:1]
        p0 map b[0:1]
        p0 write a[0:1] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:1]
        p0 dev_read d0 b[0:1]
        p0 fork p1          # copy_page_range: MMU_NOTIFY_PROTECTION_PAGE over a's VMA only
        p0 dev_read d0 a[0:1]
        p0 dev_read d0 b[0:1]
    """)
    good = [ok(), ok(), wrote(1), ok(), dev(1, 1, [pattern(prog, 1, "a", 0)]),
            dev(1, 1, zeros(1)), ok(), dev(1, 1, [pattern(prog, 1, "a", 0)]),
            dev(1, 0, zeros(1))]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 7, dev(1, 0, [pattern(prog, 1, "a", 0)])), 7,
                   "faults", "1")


def test_the_child_keeps_the_old_data_when_the_parent_writes():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 fork p1
        p0 write a[0:1] seed=2   # do_wp_page: mapped twice -> wp_page_copy
        p1 read a[0:1]
        p0 read a[0:1]
    """)
    assert_accepts(prog, ok(), wrote(1), ok(), wrote(1), cpu(pattern(prog, 1, "a", 0)),
                   cpu(pattern(prog, 2, "a", 0)))


def test_reuse_or_copy_of_a_folio_mapped_once_after_fork_is_an_allowed_choice():
    # After the child copied the page away, the parent's folio is mapped once but not
    # PageAnonExclusive: wp_can_reuse_anon_folio reuses it unless another CPU's LRU batch
    # still holds a reference, then wp_page_copy copies it and invalidates the mirror.
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 fork p1
        p1 write a[0:1] seed=2
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:1]
        p0 write a[0:1] seed=3
        p0 dev_read d0 a[0:1]
        p0 dev_write d0 a[0:1] seed=4
    """)
    head = [ok(), wrote(1), ok(), wrote(1), ok(), dev(1, 1, [pattern(prog, 1, "a", 0)]),
            wrote(1)]
    now = [pattern(prog, 3, "a", 0)]
    # Reused: the READ entry survives, so the read needs no fault but the write does.
    assert_accepts(prog, *head, dev(1, 0, now), dev(1, 1))
    # Copied: the entry was invalidated; the read re-mirrors it WRITE-tagged.
    assert_accepts(prog, *head, dev(1, 1, now), dev(1, 0))
    # Either way the later write's fault count must agree with the read's.
    verdict = check(prog, trace(*head, dev(1, 0, now), dev(1, 0)))
    assert [d.field for d in verdict.divergences] == ["faults"]
    assert verdict.divergences[0].allowed == ("1",)
    # A fault count neither choice allows names both.
    verdict = check(prog, trace(*head, dev(1, 2, now), dev(1, 0)))
    assert sorted(verdict.divergences[0].allowed) == ["0", "1"]


def test_a_copy_after_fork_may_also_erase_the_next_pages_entry():
    # wp_page_copy fires MMU_NOTIFY_CLEAR over [a[0], a[1]); dmirror_do_update's inclusive
    # last index (docs/findings.md #1) erases the entry of a[1] as well, whatever its tag,
    # so a[1]'s WRITE entry is as uncertain as a[0]'s READ entry. 6.1.192, 6.12.117 and
    # 7.2.13 all reused the folio here (faults 0, 0, check_exclusive 0).
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:1] seed=1
        p0 fork p1
        p1 write a[0:1] seed=2
        p0 open d dmirror0
        p0 dev_write d a[1:2] seed=3
        p0 dev_read d a[0:1]
        p0 write a[0:1] seed=4
        p0 dev_write d a[1:2] seed=5
        p0 dev_read d a[0:1]
        p0 check_exclusive d a[0:2]
    """)
    head = [ok(), wrote(1), ok(), wrote(1), ok(), dev(1, 1),
            dev(1, 1, [pattern(prog, 1, "a", 0)]), wrote(1)]
    now = [pattern(prog, 4, "a", 0)]
    for release in ("7.2.13", "6.12.117", "6.1.192"):
        assert check(prog, trace(*head, dev(1, 0), dev(1, 0, now), dev(0, 0),
                                 release=release)).ok
    assert_accepts(prog, *head, dev(1, 1), dev(1, 1, now), dev(0, 0))     # copied
    verdict = check(prog, trace(*head, dev(1, 2), dev(1, 0, now), dev(0, 0)))
    assert sorted(verdict.divergences[0].allowed) == ["0", "1"]


def test_mprotect_back_to_rw_makes_exclusive_pages_writable_without_a_fault():
    # change_pte_range with MM_CP_TRY_CHANGE_WRITABLE: PageAnonExclusive folios become
    # writable at once; the zero page stays read-only.
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:1] seed=1
        p0 read a[1:2]
        p0 mprotect a[0:2] r
        p0 mprotect a[0:2] rw
        p0 open d0 dmirror0
        p0 snapshot d0 a[0:2]
    """)
    assert_accepts(prog, ok(), wrote(1), cpu(*zeros(1)), ok(), ok(), ok(),
                   snap(uapi.PROT_WRITE, ZERO_READ))
