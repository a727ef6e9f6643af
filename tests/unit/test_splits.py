from collections import Counter

from fmlab.data.splits import split_of


def test_split_is_deterministic_and_content_based():
    text = "Some document about packing tokens."
    assert split_of(text, 0.1, 0.1) == split_of(text, 0.1, 0.1)
    # whitespace-normalised: reformatting does not move a document
    assert split_of("a  b\n c", 0.3, 0.3) == split_of("a b c", 0.3, 0.3)


def test_split_fractions_match_in_expectation():
    counts = Counter(split_of(f"document number {i}", 0.1, 0.2) for i in range(20000))
    assert abs(counts["validation"] / 20000 - 0.1) < 0.01
    assert abs(counts["test"] / 20000 - 0.2) < 0.01


def test_salt_changes_assignment_and_zero_fractions():
    docs = [f"doc {i}" for i in range(500)]
    a = [split_of(d, 0.2, 0.2) for d in docs]
    b = [split_of(d, 0.2, 0.2, salt="other") for d in docs]
    assert a != b
    assert {split_of(d, 0.0, 0.0) for d in docs} == {"train"}
