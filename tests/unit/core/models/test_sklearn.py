"""The ``sklearn`` model kind: loading, outputs, and every loading error's message."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streamer.core.models import ModelOptions, load_model
from streamer.core.stats import fit_stats
from streamer.errors import ModelLoadError
from tests import model_zoo as zoo


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("sklearn")
    return {
        "logreg": zoo.save_joblib(zoo.estimator("logreg"), directory / "logreg.joblib"),
        "forest": zoo.save_joblib(zoo.estimator("forest"), directory / "forest.joblib"),
        "raw": zoo.save_joblib(zoo.estimator("logreg-raw"), directory / "raw.pkl"),
        "stats": zoo.write_stats(directory / "stats.json"),
    }


def load(path: Path, **options: object) -> object:
    return load_model("sklearn", str(path), ModelOptions(**options))  # type: ignore[arg-type]


def error_of(path: Path | str, **options: object) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model("sklearn", str(path), ModelOptions(**options))  # type: ignore[arg-type]
    return str(info.value)


class TestLoading:
    def test_a_pipeline_scores_the_positive_class_like_predict_proba(
        self, files: dict[str, Path]
    ) -> None:
        model = load_model("sklearn", str(files["logreg"]))
        frame = zoo.records()
        expected = zoo.estimator("logreg").predict_proba(frame)[:, 1]
        got = model.predict(frame.to_numpy())
        assert model.output_names == ("score",)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)

    def test_a_forest_scores_exactly_like_predict_proba(self, files: dict[str, Path]) -> None:
        model = load_model("sklearn", str(files["forest"]))
        frame = zoo.records()
        expected = zoo.estimator("forest").predict_proba(frame)[:, 1]
        assert np.array_equal(model.predict(frame.to_numpy()), expected)

    def test_features_come_from_feature_names_in_and_a_scaling_pipeline_gets_raw_values(
        self, files: dict[str, Path]
    ) -> None:
        model = load_model("sklearn", str(files["logreg"]))
        assert list(model.spec.names) == zoo.feature_names()
        assert model.spec.standardize is False  # type: ignore[attr-defined]
        scaler = zoo.estimator("logreg").steps[0][1]
        # The pipeline's own scaler gives the means that 'impute' uses.
        assert model.spec.mean.tolist() == scaler.mean_.tolist()

    def test_the_name_is_the_file_stem_and_the_version_a_content_hash(
        self, files: dict[str, Path]
    ) -> None:
        import hashlib

        model = load_model("sklearn", str(files["forest"]))
        digest = hashlib.sha256(files["forest"].read_bytes()).hexdigest()
        assert (model.name, model.version) == ("forest", digest[:12])

    def test_a_configured_name_and_version_win(self, files: dict[str, Path]) -> None:
        model = load_model(
            "sklearn", str(files["forest"]), ModelOptions(name="fraud", version="2026-11")
        )
        assert (model.name, model.version) == ("fraud", "2026-11")

    def test_all_classes_become_named_fields(self, files: dict[str, Path]) -> None:
        model = load(files["logreg"], probabilities="all")
        assert model.output_names == ("proba_0", "proba_1")  # type: ignore[attr-defined]
        frame = zoo.records()[:10]
        expected = zoo.estimator("logreg").predict_proba(frame)
        np.testing.assert_allclose(
            model.predict(frame.to_numpy()),  # type: ignore[attr-defined]
            expected,
            rtol=0,
            atol=1e-12,
        )

    @pytest.mark.parametrize("method", ["predict", "decision_function"])
    def test_other_methods_give_one_score(self, files: dict[str, Path], method: str) -> None:
        model = load(files["logreg"], method=method)
        frame = zoo.records()[:20]
        expected = getattr(zoo.estimator("logreg"), method)(frame)
        np.testing.assert_allclose(
            model.predict(frame.to_numpy()),  # type: ignore[attr-defined]
            expected,
            rtol=0,
            atol=1e-12,
        )

    def test_a_model_without_feature_names_takes_them_from_the_stats_file_and_standardizes(
        self, files: dict[str, Path]
    ) -> None:
        model = load(files["raw"], stats_path=str(files["stats"]))
        spec = model.spec  # type: ignore[attr-defined]
        assert list(spec.names) == zoo.feature_names()
        assert spec.standardize is True
        frame, _ = zoo.dataset()
        stats = fit_stats(zoo.feature_names(), [frame.to_numpy()])
        assert spec.mean.tolist() == stats.mean.tolist()

    def test_parallel_estimators_are_made_sequential_for_stable_sums(self) -> None:
        from sklearn.ensemble import RandomForestClassifier

        from streamer.core.models.sklearn import _single_job

        pipeline = make_pipeline(StandardScaler(), RandomForestClassifier(n_jobs=-1))
        _single_job(pipeline)
        assert pipeline.get_params()["randomforestclassifier__n_jobs"] == 1


class TestErrors:
    def test_no_path(self) -> None:
        assert error_of("") == (
            "model error: model.kind='sklearn' needs model.path (a joblib or pickle file)"
        )

    def test_a_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.joblib"
        assert error_of(path) == (
            f"model error: cannot read model.path={path}: No such file or directory"
        )

    def test_a_file_that_is_not_a_pickle(self, tmp_path: Path) -> None:
        path = tmp_path / "junk.joblib"
        path.write_bytes(b"this is not a pickle")
        assert error_of(path).startswith(f"model error: cannot unpickle model.path={path}: ")

    def test_a_pickle_of_a_class_that_no_longer_exists(self, tmp_path: Path) -> None:
        path = tmp_path / "gone.pkl"
        path.write_bytes(pickle.dumps(zoo.estimator("forest")).replace(b"sklearn", b"sklearX", 1))
        message = error_of(path)
        assert message.startswith(f"model error: cannot unpickle model.path={path}: ")
        assert "\n" not in message

    def test_a_pickle_that_is_not_an_estimator(self, tmp_path: Path) -> None:
        path = zoo.save_joblib({"weights": [1, 2]}, tmp_path / "dict.joblib")
        assert error_of(path) == (
            f"model error: model.path={path} holds a dict, not a scikit-learn estimator"
        )

    def test_an_estimator_that_is_not_fitted(self, tmp_path: Path) -> None:
        path = zoo.save_joblib(LogisticRegression(), tmp_path / "unfitted.joblib")
        assert error_of(path) == (
            f"model error: model.path={path}: the LogisticRegression is not fitted; "
            "fit it before saving"
        )

    def test_a_method_the_estimator_lacks(self, tmp_path: Path) -> None:
        frame, target = zoo.dataset()
        path = zoo.save_joblib(LinearRegression().fit(frame, target), tmp_path / "lin.joblib")
        assert error_of(path, method="predict_proba") == (
            f"model error: model.path={path}: the LinearRegression has no method "
            "'predict_proba' (model.method); it has predict"
        )

    def test_auto_uses_predict_when_there_is_no_predict_proba(self, tmp_path: Path) -> None:
        frame, target = zoo.dataset()
        regression = LinearRegression().fit(frame, target)
        path = zoo.save_joblib(regression, tmp_path / "lin.joblib")
        model = load_model("sklearn", str(path))
        np.testing.assert_allclose(
            model.predict(frame.to_numpy()[:5]), regression.predict(frame[:5]), atol=1e-12
        )

    def test_the_wrong_feature_count(self, files: dict[str, Path]) -> None:
        assert error_of(files["raw"], features=("a", "b")) == (
            f"model error: model.path={files['raw']} expects 30 features, "
            "but preprocess.features names 2"
        )

    def test_configured_features_that_do_not_match_feature_names_in(
        self, files: dict[str, Path]
    ) -> None:
        names = (*zoo.feature_names()[1:], "colour")
        assert error_of(files["logreg"], features=names) == (
            f"model error: model.path={files['logreg']}: preprocess.features does not match "
            "the model's feature_names_in_ (missing: mean radius; unexpected: colour)"
        )

    def test_a_stats_file_that_does_not_match_the_model(
        self, files: dict[str, Path], tmp_path: Path
    ) -> None:
        stats = fit_stats(["mean radius", "x"], [np.array([[1.0, 2.0], [3.0, 5.0]])])
        path = tmp_path / "stats.json"
        path.write_bytes(stats.to_json())
        message = error_of(files["forest"], stats_path=str(path))
        assert message == (
            f"model error: model.path={files['forest']}: the stats file {path} does not match "
            "the model's feature_names_in_ (missing: "
            + ", ".join(zoo.feature_names()[1:])
            + "; unexpected: x)"
        )

    def test_a_model_without_feature_names_and_nothing_configured(
        self, files: dict[str, Path]
    ) -> None:
        assert error_of(files["raw"]) == (
            f"model error: model.path={files['raw']} has no feature names; set "
            "preprocess.features (comma-separated, in column order) or preprocess.stats_path"
        )

    def test_a_stats_file_for_a_pipeline_that_scales_itself(self, files: dict[str, Path]) -> None:
        assert error_of(files["logreg"], stats_path=str(files["stats"])) == (
            f"model error: model.path={files['logreg']} already scales its input (it contains "
            f"a scaler); standardizing with the stats file {files['stats']} too would do it "
            "twice: remove preprocess.stats_path, or set preprocess.standardize = false"
        )

    def test_impute_without_fitted_means(self, files: dict[str, Path]) -> None:
        assert error_of(files["forest"], missing="impute") == (
            "model error: preprocess.missing='impute' needs the features' fitted means, and "
            f"model.path={files['forest']} has none: set preprocess.stats_path "
            "(write one with `streamer fit-stats`)"
        )

    def test_positive_class_of_a_multiclass_model(self, tmp_path: Path) -> None:
        frame, target = zoo.dataset()
        three = target + (frame["mean radius"].to_numpy() > 15)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
                frame, three
            )
        path = zoo.save_joblib(fitted, tmp_path / "three.joblib")
        assert error_of(path) == (
            f"model error: model.path={path}: the model has 3 classes, so there is no one "
            "positive class; set model.probabilities = 'all'"
        )
        model = load(path, probabilities="all")
        assert model.output_names == ("proba_0", "proba_1", "proba_2")  # type: ignore[attr-defined]

    def test_a_model_whose_test_prediction_fails(self, tmp_path: Path) -> None:
        frame, target = zoo.dataset()
        labels = np.where(target == 1, "benign", "malignant")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = LogisticRegression(max_iter=50).fit(frame.to_numpy(), labels)
        path = Path(joblib.dump(fitted, tmp_path / "labels.joblib")[0])
        message = error_of(path, method="predict", features=tuple(zoo.feature_names()))
        assert message.startswith(
            f"model error: model.path={path}: a test prediction on one row failed: ValueError: "
        )
