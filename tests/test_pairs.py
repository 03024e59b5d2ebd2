"""pairs.txt reading/writing, pair generation and image lookup."""

import itertools
import os
from collections import Counter

import numpy as np
import pytest

from distface.eval.pairs import Pair, make_pairs, pair_image_paths, read_pairs, resolve_image, write_pairs

ORL_TEST = {f"s{i}": 10 for i in range(31, 41)}

# The opening of LFW's View 2 pairs.txt layout (tab separated), cut to 2 folds of 2.
LFW_SNIPPET = (
    "2\t2\n"
    "Abel_Pacheco\t1\t4\n"
    "Akhmed_Zakayev\t1\t3\n"
    "Abdel_Madi_Shabneh\t1\tDean_Barker\t1\n"
    "Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1\n"
    "Alan_Greenspan\t2\t5\n"
    "Ali_Naimi\t1\t8\n"
    "AJ_Cook\t1\tMarsha_Thomason\t1\n"
    "Aaron_Sorkin\t2\tFrank_Solich\t5\n"
)


def write_text(path, text):
    path.write_text(text)
    return path


def is_fold_ordered(pairs, num_folds):
    n = len(pairs) // (2 * num_folds)
    return [p.issame for p in pairs] == ([True] * n + [False] * n) * num_folds


# ---------- reading and writing ----------


def test_lfw_snippet_parses(tmp_path):
    pairs = read_pairs(write_text(tmp_path / "pairs.txt", LFW_SNIPPET))
    assert len(pairs) == 8
    assert pairs[0] == Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4)
    assert pairs[2] == Pair("Abdel_Madi_Shabneh", 1, "Dean_Barker", 1)
    assert pairs[7] == Pair("Aaron_Sorkin", 2, "Frank_Solich", 5)
    assert [p.issame for p in pairs] == [True, True, False, False] * 2


def test_spaces_blank_lines_and_single_number_header(tmp_path):
    # pairsDevTest.txt style: "<n>" header, then n matched and n mismatched; spaces instead of tabs
    text = "2\n\nAbel_Pacheco 1 4\nAkhmed_Zakayev   1\t3\nAJ_Cook 1 Marsha_Thomason 1\r\nA_B 0002 C_D 3\n\n"
    pairs = read_pairs(write_text(tmp_path / "pairsDevTest.txt", text))
    assert pairs == [
        Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4),
        Pair("Akhmed_Zakayev", 1, "Akhmed_Zakayev", 3),
        Pair("AJ_Cook", 1, "Marsha_Thomason", 1),
        Pair("A_B", 2, "C_D", 3),
    ]


def test_round_trip(tmp_path):
    pairs = make_pairs({"a": 3, "b": 4, "c": 2, "d_e": 5}, seed=3, num_folds=4)
    path = tmp_path / "out" / "pairs.txt"
    path.parent.mkdir()
    write_pairs(path, pairs, num_folds=4)
    assert read_pairs(path) == pairs
    lines = path.read_text().splitlines()
    n = len(pairs) // 8
    assert lines[0] == f"4\t{n}"
    assert len(lines[1].split("\t")) == 3 and len(lines[1 + n].split("\t")) == 4
    assert os.listdir(path.parent) == ["pairs.txt"]  # no temp file left behind
    # overwriting an existing file works too
    write_pairs(path, pairs[: 2 * n], num_folds=1)
    assert read_pairs(path) == pairs[: 2 * n]


def test_write_rejects_pairs_out_of_fold_order(tmp_path):
    same, diff = Pair("a", 1, "a", 2), Pair("a", 1, "b", 1)
    path = tmp_path / "pairs.txt"
    with pytest.raises(ValueError, match="pair 2: fold 1 expects a same-identity pair here, got a different one"):
        write_pairs(path, [same, diff, same, diff], num_folds=1)
    with pytest.raises(ValueError, match="3 pairs cannot form 1 folds"):
        write_pairs(path, [same, same, diff], num_folds=1)
    with pytest.raises(ValueError, match="4 pairs cannot form 3 folds"):
        write_pairs(path, [same, diff, same, diff], num_folds=3)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 1\nA 1 2\nA 1 B 2 C\n", r"pairs.txt:3: expected 3 or 4 fields, got 5"),
        ("1 1\n\nA 1\nA 1 B 2\n", r"pairs.txt:3: expected 3 or 4 fields, got 2"),
        ("1 1\nA 1 x\nA 1 B 2\n", r"pairs.txt:2: image number 'x' is not a positive integer"),
        ("1 1\nA 1 2\nA 0 B 2\n", r"pairs.txt:3: idx1 must be a positive image number, got 0"),
        ("ten 300\nA 1 2\n", r"pairs.txt:1: header must be"),
        ("1 2 3\nA 1 2\n", r"pairs.txt:1: header must be"),
        ("2 1\nA 1 2\nA 1 B 2\n", r"header promises 2 folds x \(1 same \+ 1 different\) = 4 pairs, found 2"),
        ("1 1\nA 1 B 2\nA 1 2\n", r"pairs.txt:2: fold 1 expects a same-identity pair here, got a different one"),
        ("2 1\nA 1 2\nA 1 B 2\nA 1 B 2\nC 1 2\n", r"pairs.txt:4: fold 2 expects a same-identity"),
        ("\n\n", r"pairs.txt: empty pairs file"),
    ],
)
def test_parse_errors_name_file_and_line(tmp_path, text, message):
    path = write_text(tmp_path / "pairs.txt", text)
    with pytest.raises(ValueError, match=message) as info:
        read_pairs(path)
    assert str(path) in str(info.value)


def test_missing_pairs_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_pairs(tmp_path / "nope.txt")


def test_pair_validates_its_fields():
    assert Pair("a", np.int64(3), "a", 4).idx1 == 3 and type(Pair("a", np.int64(3), "a", 4).idx1) is int
    with pytest.raises(ValueError, match="name2"):
        Pair("a", 1, "b c", 2)
    with pytest.raises(ValueError, match="idx2"):
        Pair("a", 1, "b", True)


# ---------- generation ----------


def test_make_pairs_orl_test_split():
    pairs = make_pairs(ORL_TEST, seed=0)
    assert len(pairs) == 900
    assert is_fold_ordered(pairs, 10)
    same = [(p.name1, p.idx1, p.idx2) for p in pairs if p.issame]
    want_same = [(n, i, j) for n in ORL_TEST for i, j in itertools.combinations(range(1, 11), 2)]
    assert sorted(same) == sorted(want_same)  # all 450, each exactly once
    diff = [p for p in pairs if not p.issame]
    assert len(diff) == 450
    assert all(p.name1 != p.name2 for p in diff)
    assert all(1 <= p.idx1 <= 10 and 1 <= p.idx2 <= 10 and p.name2 in ORL_TEST for p in diff)
    unordered = {frozenset([(p.name1, p.idx1), (p.name2, p.idx2)]) for p in diff}
    assert len(unordered) == 450  # no duplicate, in either order


def test_make_pairs_is_deterministic_and_seeded():
    assert make_pairs(ORL_TEST, seed=5) == make_pairs(ORL_TEST, seed=5)
    # the result depends on the mapping's contents, not its insertion order
    assert make_pairs(dict(reversed(list(ORL_TEST.items()))), seed=5) == make_pairs(ORL_TEST, seed=5)
    assert make_pairs(ORL_TEST, seed=5) != make_pairs(ORL_TEST, seed=6)


def test_make_pairs_drops_the_remainder():
    counts = {"a": 3, "b": 4, "c": 2}  # 3 + 6 + 1 = 10 same pairs -> 3 folds of 3 + 3, one same pair dropped
    pairs = make_pairs(counts, seed=1, num_folds=3)
    assert len(pairs) == 18 and is_fold_ordered(pairs, 3)
    same = {(p.name1, p.idx1, p.idx2) for p in pairs if p.issame}
    all_same = {(n, i, j) for n, c in counts.items() for i, j in itertools.combinations(range(1, c + 1), 2)}
    assert len(same) == 9 and same < all_same


def test_different_pairs_cover_and_are_uniform():
    # 19 same pairs; 47 different pairs exist. Over many seeds every one appears, about equally often.
    counts = {"a": 4, "b": 3, "c": 5}
    everything = {
        frozenset([(n1, i), (n2, j)])
        for n1, n2 in itertools.combinations(counts, 2)
        for i in range(1, counts[n1] + 1)
        for j in range(1, counts[n2] + 1)
    }
    assert len(everything) == 47
    seen = Counter()
    for seed in range(1500):
        for p in make_pairs(counts, seed=seed, num_folds=1):
            if not p.issame:
                seen[frozenset([(p.name1, p.idx1), (p.name2, p.idx2)])] += 1
    assert set(seen) == everything
    expected = 1500 * 19 / 47  # ~606 each; binomial sd ~19
    assert all(abs(c - expected) < 0.15 * expected for c in seen.values())


def test_make_pairs_can_take_every_different_pair_and_no_more():
    pairs = make_pairs({"a": 3, "b": 1}, num_folds=1)  # 3 same pairs, exactly 3 different pairs exist
    assert {(p.name1, p.idx1, p.name2, p.idx2) for p in pairs if not p.issame} == {
        ("a", 1, "b", 1), ("a", 2, "b", 1), ("a", 3, "b", 1)
    }
    with pytest.raises(ValueError, match="need 10 different-identity pairs but only 5 exist"):
        make_pairs({"a": 5, "b": 1}, num_folds=1)
    with pytest.raises(ValueError, match="cannot fill 10 folds"):
        make_pairs({"a": 3, "b": 3})
    with pytest.raises(ValueError, match="image count of 'b'"):
        make_pairs({"a": 3, "b": 2.5})


# ---------- image lookup ----------


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_resolve_both_layouts(tmp_path):
    touch(tmp_path / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg")
    touch(tmp_path / "s31" / "7.pgm")
    touch(tmp_path / "x" / "2.png")
    assert resolve_image(tmp_path, "Abel_Pacheco", 4) == tmp_path / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg"
    assert resolve_image(str(tmp_path), "s31", 7) == tmp_path / "s31" / "7.pgm"
    assert resolve_image(tmp_path, "x", 2) == tmp_path / "x" / "2.png"
    with pytest.raises(FileNotFoundError) as info:
        resolve_image(tmp_path, "s31", 8)
    assert str(tmp_path) in str(info.value) and "s31" in str(info.value) and "8" in str(info.value)


def test_pair_image_paths(tmp_path):
    for i in (1, 2):
        touch(tmp_path / "s1" / f"{i}.pgm")
    touch(tmp_path / "s2" / "1.pgm")
    pairs = [Pair("s1", 1, "s1", 2), Pair("s1", 2, "s2", 1)]
    p1, p2, issame = pair_image_paths(tmp_path, pairs)
    assert p1 == [str(tmp_path / "s1" / "1.pgm"), str(tmp_path / "s1" / "2.pgm")]
    assert p2 == [str(tmp_path / "s1" / "2.pgm"), str(tmp_path / "s2" / "1.pgm")]
    assert issame.dtype == bool and issame.tolist() == [True, False]
    with pytest.raises(FileNotFoundError, match=r"pair 3: no image 3 of 's2'"):
        pair_image_paths(tmp_path, pairs + [Pair("s2", 3, "s1", 1)])
