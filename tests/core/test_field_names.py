"""Free names for a user's columns next to ours: never dropped, never merged, deterministic."""

from roof_detector.core.field_names import free_names


def test_names_that_are_free_are_kept():
    assert free_names(["name", "height"], ["area_m2", "kwp"]) == ["name", "height"]


def test_every_name_we_might_pick_is_already_taken():
    source = ["kwp", "src_kwp", "src_kwp_2", "KWP", "Src_Kwp_3", "name", "NAME"]
    out = free_names(source, ["kwp", "area_m2"])
    assert len({n.lower() for n in out}) == len(out)  # no two columns collide, even ignoring case
    assert not {n.lower() for n in out} & {"kwp", "area_m2"}
    # the kept names stay, the clashes take the first free suffix, in input order
    assert out == ["src_kwp_4", "src_kwp", "src_kwp_2", "src_KWP_5", "Src_Kwp_3", "name", "src_NAME"]
    assert free_names(source, ["kwp", "area_m2"]) == out  # deterministic


def test_a_later_source_name_is_never_stolen():
    # `a` clashes and must not take `src_a`, which the second column keeps
    assert free_names(["a", "src_a"], ["a"]) == ["src_a_2", "src_a"]
