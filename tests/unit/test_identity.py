"""Security identities: one number per distinct label set, numbered from 256, held by owners."""
from __future__ import annotations

import pytest

from services.policyd.identity import (FIRST_ALLOCATED, MAX_IDENTITY, RESERVED, Entry,
                                       IdentitiesExhausted, IdentityAllocator, labels_key, listing)

WEB = {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}
DB = {"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": "shop"}


def test_first_identity_is_256_and_reserved_ones_lie_below():
    entry, created = IdentityAllocator().allocate(WEB, "pod:shop/web-1")
    assert (entry.id, created) == (256, True)
    assert FIRST_ALLOCATED == 256
    assert all(i < FIRST_ALLOCATED for i in RESERVED)


def test_same_labels_same_identity_whatever_the_order():
    ids = IdentityAllocator()
    first, _ = ids.allocate(WEB, "pod:shop/web-1")
    second, created = ids.allocate(dict(reversed(list(WEB.items()))), "pod:shop/web-2")
    assert second.id == first.id and second.labels == first.labels and created is False
    assert second.owners == ids.by_id[first.id].owners == {"pod:shop/web-1", "pod:shop/web-2"}


def test_distinct_label_sets_get_distinct_ids_in_order():
    ids = IdentityAllocator()
    got = [ids.allocate({"k8s:app": f"app{n}"}, f"pod:a/{n}")[0].id for n in range(5)]
    assert got == [256, 257, 258, 259, 260]


def test_a_label_subset_is_a_different_identity():
    ids = IdentityAllocator()
    assert ids.allocate(WEB, "a")[0].id != ids.allocate({"k8s:app": "web"}, "b")[0].id


def test_the_allocator_keeps_its_own_copy_of_the_labels():
    ids = IdentityAllocator()
    labels = dict(WEB)
    entry, _ = ids.allocate(labels, "a")
    labels["k8s:app"] = "changed"
    assert entry.labels == WEB
    assert ids.allocate(WEB, "b")[0].id == entry.id


def test_release_by_one_of_two_owners_keeps_the_identity():
    ids = IdentityAllocator()
    entry, _ = ids.allocate(WEB, "a")
    ids.allocate(WEB, "b")
    assert ids.release(entry.id, "a") is None
    assert ids.by_id[entry.id].owners == {"b"}
    assert ids.allocate(WEB, "c")[0].id == entry.id


def test_release_by_the_last_owner_frees_it():
    ids = IdentityAllocator()
    entry, _ = ids.allocate(WEB, "a")
    assert ids.release(entry.id, "a") is entry
    assert entry.id not in ids.by_id
    _, created = ids.allocate(WEB, "b")
    assert created is True


def test_a_freed_number_is_reused_by_the_next_new_label_set():
    ids = IdentityAllocator()
    web, _ = ids.allocate(WEB, "a")
    ids.allocate(DB, "b")
    ids.release(web.id, "a")
    assert ids.allocate({"k8s:app": "cache"}, "c")[0].id == web.id


def test_release_by_a_stranger_keeps_the_identity():
    ids = IdentityAllocator()
    entry, _ = ids.allocate(WEB, "a")
    assert ids.release(entry.id, "stranger") is None
    assert ids.by_id[entry.id].owners == {"a"}


def test_release_of_an_unknown_identity_is_a_no_op():
    assert IdentityAllocator().release(999, "a") is None


def test_restore_brings_back_numbers_and_owners():
    ids = IdentityAllocator()
    ids.restore(Entry(300, dict(WEB), {"pod:shop/web-1"}))
    ids.restore(Entry(256, dict(DB), {"pod:shop/db-1"}))
    entry, created = ids.allocate(WEB, "pod:shop/web-2")
    assert (entry.id, created) == (300, False)
    assert entry.owners == {"pod:shop/web-1", "pod:shop/web-2"}
    assert ids.allocate({"k8s:app": "new"}, "x")[0].id == 257


def test_exhaustion_raises():
    ids = IdentityAllocator()
    for n in range(FIRST_ALLOCATED, MAX_IDENTITY + 1):
        ids.restore(Entry(n, {"n": str(n)}, {"x"}))
    with pytest.raises(IdentitiesExhausted, match=f"{FIRST_ALLOCATED} and {MAX_IDENTITY}"):
        ids.allocate(WEB, "a")


def test_labels_key_is_order_independent_and_distinguishes_values():
    assert labels_key({"a": "1", "b": "2"}) == labels_key({"b": "2", "a": "1"})
    assert labels_key({"a": "1"}) != labels_key({"a": "2"})


def test_a_copy_allocates_and_releases_without_touching_the_original():
    ids = IdentityAllocator()
    web, _ = ids.allocate(WEB, "a")
    trial = ids.copy()
    trial.allocate(WEB, "b")                       # a second owner, in the copy only
    trial.release(web.id, "a")
    db, created = trial.allocate(DB, "a")
    assert created
    assert ids.by_id[web.id].owners == {"a"}
    assert db.id not in ids.by_id
    assert ids.allocate(DB, "c")[0].id == db.id    # the same number comes next in both
    assert trial.by_id[web.id].owners == {"b"}
    trial.release(web.id, "b")
    assert web.id in ids.by_id and ids.allocate(WEB, "z")[0].id == web.id
    assert ids.by_id[web.id].owners == {"a", "z"}


def test_the_listing_holds_the_other_nodes_identities_too():
    """identity.list in a cluster: flowd labels a flow from a pod on another node with it."""
    ids = IdentityAllocator()
    web, _ = ids.allocate(WEB, "pod:shop/web-1")                  # 256, here
    remote = {257: DB, web.id: {"k8s:app": "stale"}}               # 257 on another node
    listed = listing(ids.by_id.values(), remote)
    assert [i.id for i in listed] == [*RESERVED, 256, 257]
    assert listed[-2].labels == WEB and listed[-2].owners == ["pod:shop/web-1"]     # ours win
    assert not listed[-2].remote and not any(i.remote for i in listed[:-2])
    assert listed[-1].labels == DB and listed[-1].owners == [] and listed[-1].remote
