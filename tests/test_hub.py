"""The hub check (gmt_ray.hub, gmt_ray.preflight.check_hub): a model or data set that must come from
the Hugging Face hub, on a machine that cannot reach it, ends in one message before anything
starts. No test here downloads anything: the hub is off (offline mode) or points at a port
where nothing listens (a machine without network)."""

import pytest

from gmt_ray.config import load_experiment
from gmt_ray.errors import UsageError
from gmt_ray.hub import hub_names, hub_problems
from gmt_ray.preflight import check_hub
from tests.servers import free_port


@pytest.fixture
def offline(monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture
def no_network(monkeypatch):
    """Online mode, but the hub's endpoint is a local port where nothing listens."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    return tmp_path


def experiment(**overrides):
    return load_experiment(None, [f"{key}={value}" for key, value in overrides.items()])


def test_only_hub_names_are_checked(tmp_path):
    assert hub_names(experiment()) == {}
    assert hub_names(experiment(**{"model.name": "smollm2"})) == {}
    assert hub_names(experiment(**{"model.name": str(tmp_path)})) == {}  # a local directory
    assert hub_names(experiment(**{"model.name": "./models/mine"})) == {}  # a path, even if missing
    assert hub_names(experiment(**{"model.name": "org/model", "data.source": "hub", "data.path": "org/data"})) == {
        "model.name": "org/model", "data.path": "org/data"}


@pytest.mark.parametrize("hub", ["offline", "no_network"])
def test_an_unreachable_hub_names_the_model_and_data_set_and_what_to_do(request, empty_caches, hub):
    request.getfixturevalue(hub)
    config = experiment(**{"model.name": "mistralai/Mistral-7B-v0.1", "data.source": "hub",
                           "data.path": "meta-math/MetaMathQA"})
    with pytest.raises(UsageError) as error:
        check_hub(config)
    message = str(error.value)
    assert "\n" not in message  # one message for both
    assert "model.name='mistralai/Mistral-7B-v0.1' and data.path='meta-math/MetaMathQA'" in message
    assert "could not be reached" in message and "not in the local cache" in message
    assert "machine with hub access" in message and "local copies" in message and "--rehearse" in message
    assert ("offline mode is on" in message) == (hub == "offline")


def test_cached_models_and_data_sets_pass_offline(offline, empty_caches):
    snapshot = empty_caches / "hub" / "models--org--model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (empty_caches / "hub" / "models--org--model" / "refs").mkdir()
    (empty_caches / "hub" / "models--org--model" / "refs" / "main").write_text("abc123")
    # datasets' own prepared copy: <cache>/<namespace>___<name>/<config>/<version>/<hash>
    (empty_caches / "datasets" / "org___data_set" / "default" / "0.0.0" / "f00").mkdir(parents=True)
    assert hub_problems(experiment(**{"model.name": "org/model", "data.source": "hub",
                                      "data.path": "org/DataSet"})) == []
    assert len(hub_problems(experiment(**{"model.name": "org/other"}))) == 1


def test_a_malformed_name_is_not_blamed_on_the_hub(no_network, empty_caches):
    (problem,) = hub_problems(experiment(**{"model.name": "not a/valid id"}))
    assert problem.startswith("model.name='not a/valid id': neither a local path nor a hub model id")
