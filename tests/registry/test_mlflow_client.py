"""The unchanged MLflow client (mlflow-skinny from PyPI) against modelgate's registry.

The flow a user registering straight into modelgate follows: upload the model directory through
the artifact proxy (no run), create the registered model and a version from
`mlflow-artifacts:/<path>` (the client waits for PENDING_REGISTRATION -> READY), alias it,
read it back by alias, use the deprecated stages, search, and download it.
"""

import filecmp
import pathlib

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository


def _model_dir(root: pathlib.Path, payload: bytes) -> pathlib.Path:
    model = root / "model"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(payload)
    (model / "config.pbtxt").write_text('name: "fraud"\nmax_batch_size: 8\n')
    return model


def _upload(url: str, path: str, directory: pathlib.Path) -> str:
    HttpArtifactRepository(f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}").log_artifacts(str(directory))
    return f"mlflow-artifacts:/{path}"


def test_register_alias_stage_search_and_download(control_plane, tmp_path):
    url = control_plane
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    source1 = _upload(url, "experiments/fraud/a", _model_dir(tmp_path / "a", b"onnx model one"))
    source2 = _upload(url, "experiments/fraud/b", _model_dir(tmp_path / "b", b"onnx model two"))

    created = client.create_registered_model("fraud", tags={"team": "risk"}, description="fraud scores")
    assert created.name == "fraud"
    # create_model_version returns once the version left PENDING_REGISTRATION (it raises if the
    # import failed), but hands back the object of the create call: read it again.
    v1 = client.create_model_version("fraud", source1, tags={"owner": "ci"})
    assert v1.version == "1"
    assert client.get_model_version("fraud", "1").status == "READY"
    assert client.get_model_version("fraud", "1").tags == {"owner": "ci"}
    v2 = client.create_model_version("fraud", source2)
    assert v2.version == "2"
    assert client.get_model_version("fraud", "2").status == "READY"

    client.set_registered_model_alias("fraud", "champion", "1")
    by_alias = client.get_model_version_by_alias("fraud", "champion")
    assert (by_alias.version, by_alias.source) == ("1", source1)
    assert "champion" in by_alias.aliases
    assert client.get_registered_model("fraud").aliases == {"champion": "1"}

    with pytest.warns(FutureWarning):
        staged = client.transition_model_version_stage("fraud", "2", "Staging")
    assert staged.current_stage == "Staging"
    assert client.get_model_version_by_alias("fraud", "challenger").version == "2"
    with pytest.warns(FutureWarning):
        latest = client.get_latest_versions("fraud", stages=["Staging"])
    assert [v.version for v in latest] == ["2"]

    found = client.search_model_versions("name='fraud'")
    assert sorted(v.version for v in found) == ["1", "2"]
    assert client.search_model_versions("name='other'") == []
    assert [m.name for m in client.search_registered_models("name LIKE 'fr%'")] == ["fraud"]

    uri = client.get_model_version_download_uri("fraud", "1")
    out = pathlib.Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "dl")))
    original = tmp_path / "a" / "model"
    assert (out / "1" / "model.onnx").read_bytes() == b"onnx model one"
    assert filecmp.cmp(out / "config.pbtxt", original / "config.pbtxt", shallow=False)

    mlflow.set_registry_uri(url)
    by_uri = pathlib.Path(mlflow.artifacts.download_artifacts("models:/fraud@champion", dst_path=str(tmp_path / "m")))
    assert (by_uri / "1" / "model.onnx").read_bytes() == b"onnx model one"


def test_errors_arrive_as_mlflow_exceptions(control_plane, tmp_path):
    url = control_plane
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    with pytest.raises(MlflowException) as missing:
        client.get_registered_model("nobody")
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.create_registered_model("fraud")
    with pytest.raises(MlflowException) as dup:
        client.create_registered_model("fraud")
    assert dup.value.error_code == "RESOURCE_ALREADY_EXISTS"
    with pytest.raises(MlflowException) as runs:
        client.create_model_version("fraud", "runs:/0123/model")
    assert "runs:/ URIs are not supported" in str(runs.value)
    with pytest.raises(MlflowException) as bad:
        client.create_registered_model("bad name")
    assert bad.value.error_code == "INVALID_PARAMETER_VALUE"
    # A version whose source has no files fails; the client reports the failed registration.
    with pytest.raises(MlflowException):
        client.create_model_version("fraud", "mlflow-artifacts:/nothing/here")
    with pytest.raises(MlflowException):
        client.set_registered_model_alias("fraud", "champion", "1")
