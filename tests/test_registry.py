import pytest

from lavis.common.registry import Registry, RegistryError


def test_unknown_name_lists_registered_and_closest():
    reg = Registry("model")
    reg.register("regionblip")(object)
    reg.register("toy_multimodal")(object)
    with pytest.raises(RegistryError) as err:
        reg.get("regoinblip")
    message = str(err.value)
    assert "Did you mean 'regionblip'" in message
    assert "regionblip, toy_multimodal" in message


def test_duplicate_name_refused():
    reg = Registry("task")
    reg.register("pretrain")(int)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("pretrain")(float)
    assert reg.get("pretrain") is int
