from pathlib import Path

import pytest
import yaml

from labelloop.config import ConfigError, Params, SelectParams, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_equals_embedded_defaults():
    # The shipped params.yaml and the models' defaults must never drift apart.
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    assert on_disk == Params().to_dict()


def test_every_stage_has_a_section():
    assert set(Params().to_dict()) >= {"capture", "select", "export", "import", "dataset", "train", "gate"}


def test_unknown_section_names_the_key_and_allowed_sections():
    with pytest.raises(ConfigError) as error:
        parse_params({"selct": {}})
    message = str(error.value)
    assert "selct" in message and "select" in message and "capture" in message


def test_unknown_key_in_section_lists_allowed_keys():
    with pytest.raises(ConfigError) as error:
        parse_params({"train": {"max_depht": 3}})
    assert "train.max_depht" in str(error.value)
    assert "max_depth" in str(error.value)


def test_bad_strategy_lists_allowed_strategies():
    with pytest.raises(ConfigError) as error:
        parse_params({"select": {"strategy": "confusion"}})
    assert "select.strategy" in str(error.value)
    assert "margin" in str(error.value) and "entropy" in str(error.value)


def test_bad_selector_lists_allowed_selectors():
    with pytest.raises(ConfigError) as error:
        parse_params({"select": {"selector": "kmeans"}})
    assert "select.selector" in str(error.value) and "coreset" in str(error.value) and "'kmeans'" in str(error.value)


def test_choices_are_enums_in_the_flow_parameter_schema():
    """Prefect builds its run form from this JSON schema: an enum is a dropdown, not a free-text box."""
    schema = SelectParams.model_json_schema()
    properties = schema["properties"]
    assert "margin" in properties["strategy"]["enum"] and "coreset" in properties["selector"]["enum"]
    hybrid = schema["$defs"]["HybridParams"]["properties"]
    assert hybrid["diversity"]["enum"] == ["cluster", "coreset", "none"]
    assert Params.model_json_schema()["$defs"]["ExportParams"]["properties"]["vendor"]["enum"] == [
        "simulated", "filedrop", "label-studio"
    ]


def test_hybrid_section_is_strict_and_names_what_is_allowed():
    with pytest.raises(ConfigError) as error:
        parse_params({"select": {"hybrid": {"explore_fracton": 0.1}}})
    assert "select.hybrid.explore_fracton" in str(error.value) and "explore_fraction" in str(error.value)
    with pytest.raises(ConfigError) as error:
        parse_params({"select": {"hybrid": {"diversity": "kmeans"}}})
    assert "select.hybrid.diversity" in str(error.value) and "'coreset'" in str(error.value)
    with pytest.raises(ConfigError, match="select.hybrid.quota_fraction"):
        parse_params({"select": {"hybrid": {"quota_fraction": 1.5}}})
    with pytest.raises(ConfigError, match="all 0"):
        parse_params({"select": {"hybrid": {"exploit_fraction": 0, "quota_fraction": 0, "explore_fraction": 0}}})
    params = parse_params({"select": {"hybrid": {"quota_balance": "labelled"}}})
    assert params.select.hybrid.quota_balance == "labelled"
    assert params.select.hybrid.exploit_fraction == 0.7  # the rest keep their defaults


def test_bad_vendor_lists_allowed_vendors():
    with pytest.raises(ConfigError) as error:
        parse_params({"export": {"vendor": "mturk"}})
    assert "export.vendor" in str(error.value) and "label-studio" in str(error.value)


@pytest.mark.parametrize("section, key, value", [("select", "batch_size", 0), ("capture", "confidence_threshold", 1.5),
                                                   ("gate", "primary_metric", "auc"), ("dataset", "holdout_fraction", 1.0),
                                                   ("export", "gold_share", 1.5), ("export", "overlap_annotators", 4),
                                                   ("export", "overlap_share", -0.1), ("export", "easy_share", 2)])
def test_out_of_range_values_are_refused_with_the_key(section, key, value):
    with pytest.raises(ConfigError) as error:
        parse_params({section: {key: value}})
    assert f"{section}.{key}" in str(error.value)


def test_batch_larger_than_fatigue_guard_is_refused():
    with pytest.raises(ConfigError, match="max_batch_size"):
        parse_params({"select": {"batch_size": 900}, "export": {"max_batch_size": 500}})


def test_overrides_update_one_key_and_keep_the_rest():
    params = Params().with_overrides(select={"batch_size": 7}, import_={"min_agreement": 0.7})
    assert params.select.batch_size == 7
    assert params.select.strategy == Params().select.strategy
    assert params.import_.min_agreement == 0.7


def test_override_with_a_model_replaces_the_section():
    params = Params().with_overrides(select=SelectParams(strategy="entropy", batch_size=5))
    assert (params.select.strategy, params.select.batch_size) == ("entropy", 5)


def test_overrides_are_validated_like_the_file():
    with pytest.raises(ConfigError, match="select.batch_size"):
        Params().with_overrides(select={"batch_size": -1})


def test_missing_file_means_defaults_and_bad_yaml_is_a_clear_error(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params()
    broken = tmp_path / "params.yaml"
    broken.write_text("select: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(broken)


def test_a_list_instead_of_sections_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(path)


def _nullable_keys(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _nullable_keys(annotation, key + ".")
        elif field.is_required() is False and type(None) in getattr(annotation, "__args__", ()):
            yield key


@pytest.mark.parametrize("key", sorted(_nullable_keys(Params)))
def test_every_nullable_key_can_be_set_to_null_from_the_command_line(key):
    from labelloop.flows.cli import parse_overrides

    overrides = parse_overrides([f"{key}=null"])
    params = Params().with_overrides(**overrides)
    section, *path = key.split(".")
    value = params.section(section)
    for part in path:
        value = getattr(value, part)
    assert value is None
