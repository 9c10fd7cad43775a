"""A local pretrained directory transformers cannot use is named, with what it lacks."""

import pytest

from models.pretrained_files import pretrained_directory_problem


@pytest.fixture
def model_dir(tmp_path, e5_dir):
    """config.json of the shared encoder (a link) and nothing else yet."""
    (tmp_path / "config.json").symlink_to(e5_dir / "config.json")
    return tmp_path


def test_pytorch_pickles_are_refused_with_how_to_convert_them(model_dir):
    (model_dir / "pytorch_model.bin").write_bytes(b"x")
    problem = pretrained_directory_problem(model_dir)
    assert problem.startswith(f"{model_dir} holds only PyTorch pickles (pytorch_model.bin), "
                              f"which are refused: loading one runs any code it carries.")
    assert (f"AutoModel.from_pretrained('{model_dir}'); m.save_pretrained('{model_dir}', "
            f"safe_serialization=True)") in problem
    assert "from_pt" not in problem
    (model_dir / "model.safetensors").write_bytes(b"x")
    assert pretrained_directory_problem(model_dir) is None


def test_missing_weights_or_config_are_named(model_dir, tmp_path_factory):
    assert pretrained_directory_problem(model_dir) == (
        f"{model_dir} holds no weights: expected one of model.safetensors, "
        f"model.safetensors.index.json, tf_model.h5")
    (model_dir / "tf_model.h5").write_bytes(b"x")
    assert pretrained_directory_problem(model_dir) is None
    empty = tmp_path_factory.mktemp("empty")
    assert pretrained_directory_problem(empty).startswith(f"{empty} holds no config.json")


def test_the_encoder_loader_refuses_pickles(model_dir):
    from models.transformer import load_transformer

    (model_dir / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(OSError, match=r"holds only PyTorch pickles \(pytorch_model.bin\), "
                                      r"which are refused"):
        load_transformer(pretrained=str(model_dir))
