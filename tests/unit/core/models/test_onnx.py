"""The ``onnx`` model kind: inputs and outputs by name, and its loading errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.core.models import ModelOptions, load_model
from streamer.errors import ModelLoadError
from tests import model_zoo as zoo

FEATURES = tuple(zoo.feature_names())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("onnx")
    out = {"stats": zoo.write_stats(directory / "stats.json")}
    for kind in ("logreg", "forest"):
        path = directory / f"{kind}.onnx"
        path.write_bytes(zoo.onnx_bytes(kind))
        out[kind] = path
    return out


def error_of(path: Path | str, **options: object) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model("onnx", str(path), ModelOptions(**options))  # type: ignore[arg-type]
    return str(info.value)


class TestLoading:
    @pytest.mark.parametrize("kind", ["logreg", "forest"])
    def test_it_scores_like_the_sklearn_model_within_float32_rounding(
        self, files: dict[str, Path], kind: str
    ) -> None:
        model = load_model("onnx", str(files[kind]), ModelOptions(features=FEATURES))
        frame = zoo.records()
        expected = zoo.estimator(kind).predict_proba(frame)[:, 1]
        assert model.output_names == ("score",)
        np.testing.assert_allclose(model.predict(frame.to_numpy()), expected, atol=1e-5)

    def test_it_scores_exactly_like_onnxruntime_on_the_same_chunks(
        self, files: dict[str, Path]
    ) -> None:
        import onnxruntime as ort

        model = load_model(
            "onnx", str(files["logreg"]), ModelOptions(features=FEATURES, chunk_rows=100)
        )
        session = ort.InferenceSession(str(files["logreg"]), providers=["CPUExecutionProvider"])
        rows = zoo.records().to_numpy()[:100].astype(np.float32)
        (expected,) = session.run(["probabilities"], {"X": rows})
        assert np.array_equal(model.predict(rows.astype(np.float64)), expected[:, 1])

    def test_feature_names_can_come_from_the_stats_file(self, files: dict[str, Path]) -> None:
        model = load_model(
            "onnx", str(files["forest"]), ModelOptions(stats_path=str(files["stats"]))
        )
        assert model.spec.names == FEATURES

    def test_all_probabilities_and_chosen_outputs(self, files: dict[str, Path]) -> None:
        every = load_model(
            "onnx", str(files["logreg"]), ModelOptions(features=FEATURES, probabilities="all")
        )
        assert every.output_names == ("proba_0", "proba_1")
        label = load_model(
            "onnx", str(files["logreg"]), ModelOptions(features=FEATURES, outputs=("label",))
        )
        frame = zoo.records()[:30]
        assert label.output_names == ("score",)
        assert (
            label.predict(frame.to_numpy()).tolist()
            == zoo.estimator("logreg").predict(frame).astype(float).tolist()
        )

    def test_one_input_per_feature_is_fed_by_name(self, tmp_path: Path) -> None:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        from sklearn.compose import ColumnTransformer  # isort: skip

        frame, target = zoo.dataset()
        two = frame[["mean radius", "mean texture"]].set_axis(["radius", "texture"], axis=1)
        fitted = make_pipeline(
            ColumnTransformer([("keep", "passthrough", ["radius", "texture"])]),
            LogisticRegression(),
        ).fit(two, target)
        onx = convert_sklearn(
            fitted,
            initial_types=[
                ("texture", FloatTensorType([None, 1])),
                ("radius", FloatTensorType([None, 1])),
            ],
            options={id(fitted.steps[-1][1]): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        path = tmp_path / "two.onnx"
        path.write_bytes(onx.SerializeToString())
        model = load_model("onnx", str(path))
        assert model.spec.names == ("texture", "radius")
        rows = two[["texture", "radius"]].to_numpy()[:50]
        expected = fitted.predict_proba(two[:50])[:, 1]
        np.testing.assert_allclose(model.predict(rows), expected, atol=1e-5)


class TestErrors:
    def test_no_path(self) -> None:
        assert error_of("") == "model error: model.kind='onnx' needs model.path (an .onnx file)"

    def test_a_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.onnx"
        assert error_of(path) == (
            f"model error: cannot read model.path={path}: No such file or directory"
        )

    def test_a_file_that_is_not_onnx(self, tmp_path: Path) -> None:
        path = tmp_path / "junk.onnx"
        path.write_bytes(b"not a protobuf at all")
        message = error_of(path)
        assert message.startswith(f"model error: model.path={path} is not a valid ONNX model: ")
        assert "\n" not in message

    def test_a_matrix_input_without_feature_names(self, files: dict[str, Path]) -> None:
        assert error_of(files["forest"]) == (
            f"model error: model.path={files['forest']} has no feature names; set "
            "preprocess.features (comma-separated, in column order) or preprocess.stats_path"
        )

    def test_the_wrong_feature_count(self, files: dict[str, Path]) -> None:
        assert error_of(files["forest"], features=FEATURES[:3]) == (
            f"model error: model.path={files['forest']} expects 30 features, "
            "but preprocess.features names 3"
        )

    def test_an_output_that_does_not_exist(self, files: dict[str, Path]) -> None:
        assert error_of(files["forest"], features=FEATURES, outputs=("score",)) == (
            f"model error: model.path={files['forest']} has no output 'score' "
            "(model.outputs); it has label, probabilities"
        )

    def test_several_outputs_must_each_be_one_column(self, files: dict[str, Path]) -> None:
        assert error_of(files["forest"], features=FEATURES, outputs=("label", "probabilities")) == (
            f"model error: model.path={files['forest']}: with several model.outputs, each must "
            "give one value per row; label, probabilities give 3 together"
        )

    def test_a_stats_file_for_a_graph_that_scales_itself(self, files: dict[str, Path]) -> None:
        assert error_of(files["logreg"], stats_path=str(files["stats"])) == (
            f"model error: model.path={files['logreg']} already scales its input (it contains "
            f"a scaler); standardizing with the stats file {files['stats']} too would do it "
            "twice: remove preprocess.stats_path, or set preprocess.standardize = false"
        )
