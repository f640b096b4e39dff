"""Negative classes of the synthetic reward model: pure, seeded, each doing what it says."""

from __future__ import annotations

import random

from sumrl.data.schema import Example
from sumrl.rewards import negatives as N

EXAMPLES = [
    Example("a", "Alice Smith from Acme Corp presented the results in Paris. The team trained 12 models. "
                 "Their method is fast and it improves accuracy on every benchmark we tried in 2019.",
            ["Alice Smith presented 12 models in Paris. The method is fast. It improves accuracy on every benchmark."]),
    Example("b", "Weather in Oslo was cold. Bob Jones of Nordic Labs measured 30 days of snow. "
                 "Roads were closed for a week and schools moved classes online for the whole period.",
            ["Bob Jones measured 30 days of snow in Oslo. Roads were closed and schools went online."]),
    Example("c", "Cats sleep most of the day. They hunt at night and are very independent animals indeed.",
            ["Cats sleep a lot and hunt at night."]),
]


def rng(seed=0):
    return random.Random(seed)


def ref(i):
    return EXAMPLES[i].references[0]


def test_every_class_is_deterministic_and_differs_from_the_reference():
    for name, fn in N.NEGATIVE_CLASSES.items():
        a = fn(0, EXAMPLES, rng(1)) if name != "random" else fn(0, EXAMPLES, rng(1), None)
        b = fn(0, EXAMPLES, rng(1)) if name != "random" else fn(0, EXAMPLES, rng(1), None)
        assert a == b, name
        assert a is not None and a != ref(0), name


def test_paper_classes():
    w = ref(0).split()
    assert len(N.random_tokens(0, EXAMPLES, rng()).split()) == len(w)
    assert N.repair(0, EXAMPLES, rng()) in (ref(1), ref(2))
    assert sorted(N.shuffle(0, EXAMPLES, rng()).split()) == sorted(w)
    rep = N.repeat_end(0, EXAMPLES, rng()).split()
    assert rep[:4] == w[:4] and len(rep) >= len(w)
    tail = rep[-12:]
    assert len(set(tail)) <= 6  # the end cycles through one short phrase
    assert N.copy_input(0, EXAMPLES, rng()) == " ".join(EXAMPLES[0].document.split()[:len(w)])


def test_repeat_end_on_short_references_terminates_with_a_repeated_tail():
    for n in range(8, 16):
        ex = [Example("s", "doc", [" ".join(f"w{k}" for k in range(n))])]
        for seed in range(20):
            out = N.repeat_end(0, ex, rng(seed)).split()
            assert len(out) >= n and out[:4] == [f"w{k}" for k in range(4)]
            assert len(set(out)) < n  # some words repeat instead of the reference's end


def test_entity_swap_replaces_one_name_with_another():
    out = N.entity_swap(0, EXAMPLES, rng(3))
    names = ["Alice Smith", "Paris"]
    assert sum(n not in out for n in names) == 1  # exactly one name replaced
    assert N.entity_swap(2, EXAMPLES, rng()) is None  # no names in "Cats sleep ..."


def test_number_change_changes_only_a_number():
    out = N.number_change(1, EXAMPLES, rng())
    assert "30" not in out.split() and out.replace(out.split()[3], "30", 1) == ref(1)
    assert N.number_change(2, EXAMPLES, rng()) is None


def test_negation_flips_polarity():
    out = N.negation(0, EXAMPLES, rng(0))
    assert out != ref(0)
    assert "not" in out  # the reference has no negation, so one is added
    neg = [Example("n", "doc", ["The method is not fast."])]
    assert N.negation(0, neg, rng()) == "The method is fast."


def test_insert_sentence_takes_a_sentence_from_another_document():
    out = N.insert_sentence(2, EXAMPLES, rng(0))
    assert ref(2) not in out or len(out) > len(ref(2))
    other_sents = [s for ex in EXAMPLES[:2] for s in N.sentences(ex.document)]
    assert any(s.strip() in out for s in other_sents)


def test_truncate_cuts_mid_sentence():
    out = N.truncate(0, EXAMPLES, rng(0))
    assert ref(0).startswith(out) and len(out) < len(ref(0))
    assert not out.endswith((".", "!", "?"))


def test_make_negatives_seeded_per_example():
    a = N.make_negatives(EXAMPLES, seed=0)
    b = N.make_negatives(EXAMPLES[:2], seed=0)
    assert set(a) == set(N.NEGATIVE_CLASSES)
    assert a["shuffle"][:2] == b["shuffle"]  # adding an example does not change the others' negatives
    assert a["entity_swap"][2] is None
