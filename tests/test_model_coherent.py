"""Device-coherent memory (/dev/hmm_dmirror2 and 3, reference/coherent.py): a page migrated
there stays mapped by a present PTE, so the CPU uses it in place; only its own device
migrates it back. Each program here was run on 7.2.13, 6.12.117 and 6.1.192 under QEMU
with these results (tests/test_vm_coherent.py checks more of it on the kernels)."""

import errno

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, err, ok, pattern, patterns, program, replaced,
    snap, trace, wrote, zeros,
)

from reference import check, uapi

ENOENT = errno.ENOENT
W, R, NONE = uapi.PROT_WRITE, uapi.PROT_READ, uapi.PROT_NONE
LOCAL, REMOTE = uapi.PROT_DEV_COHERENT_LOCAL, uapi.PROT_DEV_COHERENT_REMOTE

IN_PLACE = """
    region a pages=4
    p0 map a[0:4]
    p0 write a[0:2] seed=5
    p0 open d2 dmirror2
    p0 open d3 dmirror3
    p0 open d0 dmirror0
    p0 migrate_to_dev d2 a[0:4]
    p0 snapshot d2 a[0:4]
    p0 snapshot d3 a[0:4]
    p0 snapshot d0 a[0:4]
    p0 read a[0:4]
    p0 write a[3:4] seed=6
    p0 snapshot d2 a[0:4]
    p0 dev_read d3 a[2:4]
"""


def in_place_results(prog):
    data = patterns(prog, 5, "a", 0, 2) + zeros(2)
    return [ok(), wrote(2), ok(), ok(), ok(),
            dev(4, 0, data),                 # migrate_vma_insert_page for the two holes
            snap(*[LOCAL | W] * 4),          # the pages of d2's own device
            snap(*[REMOTE | W] * 4),         # another coherent device's view
            snap(*[REMOTE | W] * 4),         # a device-private device's view
            cpu(*data),                      # a present PTE: no fault, nothing migrates
            wrote(1),
            snap(*[LOCAL | W] * 4),          # still in device memory after the CPU's store
            dev(2, 1, (data[2], pattern(prog, 6, "a", 3)))]   # d3 sees the store in place


def test_the_cpu_uses_a_coherent_page_in_place_and_every_device_sees_it():
    prog = program(IN_PLACE)
    assert_accepts(prog, *in_place_results(prog))


def test_a_cpu_access_does_not_bring_a_coherent_page_back_as_it_would_a_private_one():
    prog = program(IN_PLACE)
    results = replaced(in_place_results(prog), 11, snap(*[W] * 4))
    assert_rejects(prog, results, 11, "snapshot[0]")


def test_a_snapshot_of_a_coherent_page_is_never_device_private():
    prog = program(IN_PLACE)
    private = uapi.PROT_DEV_PRIVATE_LOCAL | W
    assert_rejects(prog, replaced(in_place_results(prog), 6, snap(*[private] * 4)), 6, "snapshot[0]")


ONLY_ITS_DEVICE = """
    region a pages=2
    p0 map a[0:2]
    p0 write a[0:2] seed=5
    p0 open d2 dmirror2
    p0 open d3 dmirror3
    p0 open d0 dmirror0
    p0 migrate_to_dev d2 a[0:2]
    p0 migrate_to_dev d2 a[0:1]
    p0 migrate_to_dev d3 a[0:1]
    p0 migrate_to_dev d2 a[0:1]
    p0 migrate_to_sys d0 a[0:2]
    p0 migrate_to_sys d3 a[0:2]
    p0 migrate_to_sys d2 a[0:1]
    p0 snapshot d2 a[0:2]
    p0 read a[0:2]
"""


def test_only_the_owning_device_migrates_a_coherent_page_and_a_foreign_collect_invalidates():
    prog = program(ONLY_ITS_DEVICE)
    data = patterns(prog, 5, "a", 0, 2)
    assert_accepts(
        prog, ok(), wrote(2), ok(), ok(), ok(),
        dev(2, 0, data),
        # SELECT_SYSTEM skips the coherent page; d2's own MMU_NOTIFY_MIGRATE leaves its
        # entry, so the read-back finds it
        dev(1, 0, data[:1]),
        # d3 skips it too and has no entry: -ENOENT; its notifier (owner: d3's device)
        # erased d2's entries for pages 0 and, by the dmirror_do_update quirk, 1 ...
        err(ENOENT),
        err(ENOENT),                 # ... so d2's read-back finds none either
        dev(0, 0),                   # dmirror0 selects device-private pages only
        dev(0, 0),                   # d3 selects its own device's coherent pages only
        dev(1, 0),                   # d2 takes page 0 back to system memory
        snap(W, LOCAL | W),
        cpu(*data))


FORK = """
    region a pages=4
    p0 map a[0:4]
    p0 write a[0:4] seed=5
    p0 open d2 dmirror2
    p0 migrate_to_dev d2 a[0:4]
    p0 fork p1
    p1 snapshot d2 a[0:4]
    p1 write a[0:2] seed=8
    p0 snapshot d2 a[0:4]
    p0 write a[0:1] seed=9
    p0 write a[2:3] seed=9
    p0 snapshot d2 a[0:4]
    p1 read a[0:4]
"""


def test_fork_shares_a_coherent_page_read_only_and_a_write_copies_or_reuses_it():
    prog = program(FORK)
    data = patterns(prog, 5, "a", 0, 4)
    assert_accepts(
        prog, ok(), wrote(4), ok(),
        dev(4, 0, data),
        ok(),
        # the fd mirrors p0's mm: its coherent pages, write-protected by the fork
        snap(*[LOCAL | R] * 4),
        wrote(2),                    # p1's stores copy pages 0-1 into system memory
        snap(*[LOCAL | R] * 4),      # p0 still maps the coherent pages read-only
        wrote(1),                    # page 0 is mapped once now: p0's store reuses it
        wrote(1),                    # page 2 is still shared: p0's store copies it
        snap(LOCAL | W, LOCAL | R, W, LOCAL | R),
        cpu(*patterns(prog, 8, "a", 0, 2), *data[2:]))


EVICT = """
    region a pages=3
    p0 map a[0:3]
    p0 write a[0:3] seed=5
    p0 open d2 dmirror2
    p0 open d0 dmirror0
    p0 migrate_to_dev d2 a[0:3]
    p0 madvise a[0:1] pageout
    p0 madvise a[1:2] free
    p0 madvise a[2:3] cold
    p0 snapshot d0 a[0:3]
    p0 close d2
    p0 snapshot d0 a[0:3]
    p0 read a[0:3]
"""


def test_reclaim_leaves_coherent_pages_and_closing_the_device_evicts_them():
    prog = program(EVICT)
    data = patterns(prog, 5, "a", 0, 3)
    results = [ok(), wrote(3), ok(), ok(), dev(3, 0, data), ok(), ok(), ok(),
               # madvise_cold_or_pageout_pte_range and madvise_free_pte_range skip
               # zone-device folios: the pages are where they were, content and all
               snap(*[REMOTE | W] * 3),
               ok(),
               snap(*[W] * 3),       # dmirror_fops_release evicted the device's chunk
               cpu(*data)]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 8, snap(uapi.PROT_NONE, REMOTE | W, REMOTE | W)),
                   8, "snapshot[0]")


EXCLUSIVE = """
    region a pages=4
    p0 map a[0:4]
    p0 write a[0:4] seed=5
    p0 open d2 dmirror2
    p0 open d3 dmirror3
    p0 migrate_to_dev d2 a[0:4]
    p0 exclusive d3 a[0:2]
    p0 snapshot d2 a[0:4]
    p0 migrate_to_sys d2 a[0:4]
    p0 snapshot d2 a[0:4]
    p0 release d2
    p0 snapshot d3 a[0:4]
    p0 read a[0:4]
    p0 check_exclusive d3 a[0:4]
"""


def exclusive_results(prog):
    data = patterns(prog, 5, "a", 0, 4)
    return [ok(), wrote(4), ok(), ok(), dev(4, 0, data),
            dev(2, 0, data[:2]),              # device-exclusive entries of coherent pages
            snap(NONE, NONE, LOCAL | W, LOCAL | W),
            dev(2, 0),                        # migrate_to_sys skips device-exclusive entries
            snap(NONE, NONE, W, W),
            dev(0, 0),
            # eviction: try_to_migrate_one makes a readable migration entry of a
            # device-exclusive one, so the pages come back read-only
            snap(R, R, W, W),
            cpu(*data),
            dev(0, 0)]                        # the eviction's CLEAR erased the ATOMIC entries


def test_a_coherent_page_made_exclusive_stays_until_eviction_takes_it_back_read_only():
    prog = program(EXCLUSIVE)
    assert_accepts(prog, *exclusive_results(prog))


def test_on_6_x_the_eviction_of_a_coherent_page_behind_an_exclusive_entry_is_refused():
    # 6.x page_make_device_exclusive_one dropped the rmap but kept the reference, so the
    # eviction gives the page up and RELEASE hangs in memunmap_pages (docs/findings.md #21)
    prog = program(EXCLUSIVE)
    verdict = check(prog, trace(*exclusive_results(prog)[:10], release="6.12.117"))
    assert verdict.ok and verdict.unmodelled_from == 9
    assert verdict.unmodelled_op == \
        "evicting a device-coherent page behind a device-exclusive entry on 6.x"


def test_ops_whose_zone_device_path_is_not_followed_are_refused_where_they_meet_one():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=5
        p0 open d2 dmirror2
        p0 migrate_to_dev d2 a[0:1]
        p0 madvise a[1:2] collapse
        p0 madvise a[0:1] collapse
    """)
    verdict = check(prog, trace(ok(), wrote(2), ok(), dev(1, 0, [pattern(prog, 5, "a", 0)]),
                                ok(), ok()))
    assert verdict.checked == 5     # a system page next to it is stated
    assert verdict.unmodelled_op == "madvise collapse on a device-coherent page"


def test_a_compound_migration_to_coherent_memory_is_refused_on_7_2_for_its_warning():
    prog = program("""
        region a pages=512
        p0 map a[0:512]
        p0 open d2 dmirror2
        p0 migrate_to_dev d2 a[0:512]
    """)
    verdict = check(prog, trace(ok(), ok(), ok()))
    assert verdict.unmodelled_from == 2
    assert "docs/findings.md #18" in verdict.unmodelled_op
    # 6.x drivers allocate page by page: no compound allocation, no warning
    older = check(prog, trace(ok(), ok(), dev(512, 0, zeros(512)), release="6.12.117"))
    assert older.ok and older.checked == 3


HOLE = """
    region b pages=2
    p0 map b[0:2]
    p0 open d0 dmirror3
    p0 migrate_to_dev d0 b[0:1]
    p0 dev_write d0 b[0:1] seed=2
"""


def test_a_migrated_hole_is_mirrored_writable_by_6_x_drivers_only():
    # profile.hole_mirrored_writable: 6.x dmirror_migrate_alloc_and_copy sets
    # MIGRATE_PFN_WRITE for a page without a source in a VM_WRITE VMA; 7.2 mirrors it
    # READ, so its device write faults once (a coherent page needs no CPU fault for it)
    prog = program(HOLE)
    head = [ok(), ok(), dev(1, 0, zeros(1))]
    assert_accepts(prog, *head, dev(1, 1))
    assert_rejects(prog, head + [dev(1, 0)], 3, "faults")
    for release in ("6.12.117", "6.1.192"):
        assert check(prog, trace(*head, dev(1, 0), release=release)).ok
        assert not check(prog, trace(*head, dev(1, 1), release=release)).ok
