"""madvise cold, pageout and free over THPs on the real kernel (7.2), judged by the model
(reference/thp_split.py): the splits of a THP a range covers in part, their notifiers over
every VMA of the 2 MiB, what happens to the split pages, and the THPs left alone."""

from __future__ import annotations

import pytest

from test_vm_model_support import agrees

pytestmark = pytest.mark.vm


def test_cold_splits_a_thp_it_covers_in_part_and_leaves_a_whole_one(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        region b pages=512
        p0 thp always madvise
        p0 open d dmirror0
        p0 map a[0:1024]
        p0 write a[0:512] seed=1
        p0 dev_read d a[0:514]
        p0 pagemap a[0:1]
        p0 madvise a[0:100] cold
        p0 pagemap a[0:2]
        p0 pagemap a[100:101]
        p0 dev_read d a[513:514]
        p0 dev_read d a[512:513]
        p0 dev_read d a[0:1]
        p0 snapshot d a[0:2]
        p0 read a[0:2]
        p0 map b[0:512]
        p0 write b[0:512] seed=2
        p0 dev_read d b[0:2]
        p0 madvise b[0:512] cold
        p0 pagemap b[0:2]
        p0 dev_read d b[0:2]
    """)
    assert trace.results[5].pagemap[0].has_flag("THP")
    assert not trace.results[7].pagemap[0].has_flag("THP")
    assert trace.results[18].pagemap[0].has_flag("THP")


def test_pageout_and_free_of_part_of_a_thp_reclaim_the_split_pages(kernel_session):
    agrees(kernel_session, """
        region c pages=512
        region e pages=512
        p0 thp always madvise
        p0 map c[0:512]
        p0 write c[0:512] seed=3
        p0 madvise c[0:10] pageout
        p0 pagemap c[0:2]
        p0 pagemap c[10:11]
        p0 read c[0:12]
        p0 pagemap c[0:2]
        p0 map e[0:512]
        p0 write e[0:512] seed=4
        p0 madvise e[0:10] free
        p0 pagemap e[0:2]
        p0 write e[5:6] seed=5
        p0 madvise e[0:20] pageout
        p0 pagemap e[0:6]
        p0 read e[0:12]
    """)


def test_a_split_of_a_pte_mapped_thp_notifies_each_vma_over_it(kernel_session):
    agrees(kernel_session, """
        region a pages=512
        p0 thp always madvise
        p0 open d dmirror0
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 mprotect a[0:256] r
        p0 pagemap a[0:2]
        p0 dev_read d a[0:2]
        p0 dev_read d a[300:302]
        p0 madvise a[300:310] cold
        p0 pagemap a[0:2]
        p0 pagemap a[300:301]
        p0 dev_read d a[0:2]
        p0 dev_read d a[300:302]
        p0 mprotect a[0:256] rw
        p0 write a[0:1] seed=5
        p0 pagemap a[0:2]
    """)


def test_cold_leaves_a_thp_another_process_maps(kernel_session):
    agrees(kernel_session, """
        region a pages=512
        p0 thp always madvise
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 fork p1
        p0 madvise a[0:100] cold
        p0 pagemap a[0:2]
        p1 madvise a[0:100] cold
        p1 pagemap a[0:2]
    """)


def test_a_split_maps_zero_filled_pages_as_the_zero_page(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        p0 thp always madvise
        p0 map a[0:1024]
        p0 write a[4:5] seed=1
        p0 mprotect a[0:1024] r
        p0 madvise a[67:81] free
        p0 move_pages a[3:6]
        p0 pagemap a[3:6]
        p0 read a[2:35]
        p0 mprotect a[0:1024] rw
        p0 write a[5:7] seed=3
        p0 madvise a[654:715] cold
        p0 pagemap a[3:8]
    """)
    assert trace.results[6].pagemap[0].has_flag("ZERO_PAGE")
    assert not trace.results[6].pagemap[1].has_flag("THP")
