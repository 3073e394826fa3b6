"""State features in file mode (`streamer features`, `score-file`) against the live path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.cli import main
from streamer.core.models import load_configured
from streamer.core.state.store import RocksStore
from streamer.filemode import file_settings
from streamer.settings import build_settings
from streamer.statefile import StateApplier, compute_features
from tests.unit.core.state.streams import TABLES, Rec, streams

STATE_TOML = """
[state]
allowed_lateness_s = 3
"""


def state_settings(tables: list[dict[str, object]], **state: object) -> object:
    return build_settings(
        {
            "kafka": {"input_topic": "in", "output_topic": "out"},
            "state": {"features": tables, **state},
        },
        environ={},
    )


def record_value(rec: Rec) -> bytes:
    """The record as a row of a topic export: its key, timestamp and partition in columns."""
    doc = dict(rec.doc)
    if rec.key is not None:
        doc["rk"] = rec.key.decode()
    doc["kts"] = rec.timestamp_ms
    doc["p"] = rec.partition
    return orjson.dumps(doc)


def live_batches(
    directory: Path, config: object, stream: list[Rec], sizes: list[int]
) -> dict[int, tuple[bytes | None, str]]:
    """What the scoring path serves each row: per partition, random batches, a RocksDB store.

    The keys of the result are the rows' places in the file (their offsets as the file's rows).
    """
    served: dict[int, tuple[bytes | None, str]] = {}
    for partition in (0, 1):
        rows = [i for i, rec in enumerate(stream) if rec.partition == partition]
        live = StateApplier(
            config,  # type: ignore[arg-type]
            "topic",
            partition=partition,
            store=RocksStore(directory / f"store-{partition}"),
            remember_served=True,
        )
        at = 0
        index = 0
        while at < len(rows):
            batch = rows[at : at + sizes[index % len(sizes)]]
            results = live.apply(
                batch,
                [stream[i].key for i in batch],
                [record_value(stream[i]) for i in batch],
                [stream[i].timestamp_ms for i in batch],
            )
            served.update((r.offset, (r.enriched, r.reason)) for r in results)
            at += len(batch)
            index += 1
        live.state.store.close()
    return served


class TestOfflineEqualsLive:
    @settings(deadline=None, database=None, max_examples=25)
    @given(stream=streams(), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=3))
    def test_features_of_a_topic_export_equal_the_live_batches_bit_for_bit(
        self, tmp_path_factory: pytest.TempPathFactory, stream: list[Rec], sizes: list[int]
    ) -> None:
        directory = tmp_path_factory.mktemp("parity")
        config = state_settings(TABLES, allowed_lateness_s=3.0)
        # the export interleaves the two partitions; each keeps its offset order
        path = directory / "topic.jsonl"
        path.write_bytes(b"".join(record_value(rec) + b"\n" for rec in stream))
        served = live_batches(directory, config, stream, sizes)
        out, rejects = directory / "features.jsonl", directory / "features.rejects.jsonl"
        report = compute_features(
            config,  # type: ignore[arg-type]
            path,
            out,
            rejects,
            fmt="jsonl",
            output_format="jsonl",
            key_column="rk",
            timestamp_column="kts",
            partition_column="p",
            chunk_rows=7,
        )
        lines = out.read_bytes().splitlines()
        rejected = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
        in_order = [served[row] for row in range(len(stream))]
        assert lines == [enriched for enriched, _ in in_order if enriched is not None]
        assert [(r["row"], r["reason"]) for r in rejected] == [
            (row, reason) for row, (enriched, reason) in enumerate(in_order) if enriched is None
        ]
        assert report.rows == len(stream)


@pytest.fixture
def transactions(tmp_path: Path) -> Path:
    """Card transactions of the demo's shape, without transactions_last_hour."""
    rng = np.random.default_rng(7)
    rows = []
    t = 1_700_000_000_000
    for _ in range(400):
        t += int(rng.integers(0, 600_000))
        rows.append(
            {
                "card_id": f"card-{int(rng.integers(1, 12)):02d}",
                "amount": round(float(rng.uniform(1, 300)), 2),
                "distance_from_home_km": round(float(rng.uniform(0, 80)), 3),
                "account_age_days": int(rng.integers(1, 3000)),
                "merchant_risk": round(float(rng.uniform(0, 1)), 4),
                "ts": t,
            }
        )
    rows[10]["card_id"] = ""  # an empty cell: the key is missing
    path = tmp_path / "transactions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    (tmp_path / "state.toml").write_text(
        STATE_TOML + '\n[[state.features]]\nname = "transactions_last_hour"\nkey = "card_id"\n'
        'agg = "count"\nwindow = "1h"\ntime = "ts"\n'
    )
    return path


class TestCommands:
    def test_features_writes_the_training_set_and_score_file_scores_the_same_values(
        self,
        transactions: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        config = transactions.parent / "state.toml"
        training = transactions.parent / "training.csv"
        assert main(["features", str(transactions), "-c", str(config), "-o", str(training)]) == 0
        assert "400 rows" in capsys.readouterr().out
        frame = pd.read_csv(training)
        assert len(frame) == 399
        assert list(frame.columns)[-1] == "transactions_last_hour"
        rejects = pd.read_csv(transactions.parent / "training.rejects.csv")
        assert rejects[["row", "reason", "stage"]].values.tolist() == [[10, "missing_key", "state"]]
        # the count, from the definition, with pandas: the card's rows in (t - 1h, t]
        source = pd.read_csv(transactions).drop(index=10)
        expected = []
        for index, row in source.iterrows():
            card = source.loc[:index]
            card = card[card["card_id"] == row["card_id"]]
            t = row["ts"]
            expected.append(float(((card["ts"] > t - 3_600_000) & (card["ts"] <= t)).sum()))
        assert frame["transactions_last_hour"].tolist() == expected
        # with [state] dir, the state is in RocksDB, in a subdirectory removed at the end
        on_disk = transactions.parent / "on_disk.toml"
        state_dir = transactions.parent / "state"
        on_disk.write_text(config.read_text().replace("[state]", f'[state]\ndir = "{state_dir}"'))
        again = transactions.parent / "training-on-disk.csv"
        assert main(["features", str(transactions), "-c", str(on_disk), "-o", str(again)]) == 0
        assert again.read_bytes() == training.read_bytes()
        assert list(state_dir.iterdir()) == []
        # score-file computes the same feature on the way, and the model scores it
        predictions = transactions.parent / "scores.csv"
        code = main(
            ["score-file", str(transactions), "-c", str(config), "-o", str(predictions),
             "--no-progress"]
        )  # fmt: skip
        assert code == 0
        scored = pd.read_csv(predictions)
        model = load_configured(file_settings(str(config), transactions, predictions, "r.csv"))
        names = list(model.spec.names)
        matrix = (frame[names].to_numpy(dtype=np.float64) - model.spec.mean) / model.spec.std
        offline = np.asarray(model.predict(matrix)).reshape(len(matrix), -1)[:, 0]
        assert scored["row"].tolist() == frame["row"].tolist()
        assert scored["score"].tolist() == offline.tolist()
        score_rejects = pd.read_csv(transactions.parent / "scores.rejects.csv")
        assert score_rejects[["row", "reason", "stage"]].values.tolist() == [
            [10, "missing_key", "state"]
        ]
        # whatever the batch size and the actor counts
        monkeypatch.setenv("STREAMER_PREPROCESS__WORKERS", "3")
        monkeypatch.setenv("STREAMER_MODEL__WORKERS", "2")
        again = transactions.parent / "again.csv"
        code = main(
            ["score-file", str(transactions), "-c", str(config), "-o", str(again),
             "--max-records", "7", "--no-progress"]
        )  # fmt: skip
        assert code == 0
        assert pd.read_csv(again)["score"].tolist() == offline.tolist()

    @pytest.mark.parametrize(
        ("table", "message"),
        [
            ('agg = "median"\nwindow = "1h"', "agg must be one of count, sum"),
            ('agg = "count"\nwindow = "an hour"', "window must be a duration"),
            ('agg = "sum"\nwindow = "1h"', "field is required for agg = 'sum'"),
        ],
    )
    def test_a_bad_declaration_exits_2_with_one_line(
        self, transactions: Path, capsys: pytest.CaptureFixture[str], table: str, message: str
    ) -> None:
        config = transactions.parent / "bad.toml"
        config.write_text(f'[[state.features]]\nname = "f"\nkey = "card_id"\n{table}\n')
        out = transactions.parent / "x.csv"
        assert main(["features", str(transactions), "-c", str(config), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err
        assert "state.features[0] ('f')" in err
        assert len(err.splitlines()) == 1

    def test_a_model_feature_neither_in_the_record_nor_declared_exits_2(
        self, transactions: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = transactions.parent / "typo.toml"
        config.write_text(
            '[[state.features]]\nname = "transactions_last_hours"\nkey = "card_id"\n'
            'agg = "count"\nwindow = "1h"\ntime = "ts"\n'
        )
        out = transactions.parent / "x.csv"
        code = main(["score-file", str(transactions), "-c", str(config), "-o", str(out)])
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert "'transactions_last_hour' is neither in the input's first record" in err
        assert len(err.splitlines()) == 1

    def test_run_refuses_declared_features_over_a_non_json_input(
        self, transactions: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = transactions.parent / "run.toml"
        config.write_text(
            '[kafka]\ninput_topic = "a"\noutput_topic = "b"\n'
            '[format]\ninput = "avro"\nregistry_url = "http://127.0.0.1:1"\n'
            + (transactions.parent / "state.toml").read_text()
        )
        assert main(["run", "-c", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert "format.input='avro': [[state.features]] read JSON objects" in err
        assert len(err.splitlines()) == 1

    def test_run_refuses_logged_features_in_avro_outputs(
        self, transactions: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = transactions.parent / "run.toml"
        config.write_text(
            '[kafka]\ninput_topic = "a"\noutput_topic = "b"\n'
            '[format]\noutput = "avro"\nregistry_url = "http://127.0.0.1:1"\n'
            + (transactions.parent / "state.toml")
            .read_text()
            .replace("[state]", "[state]\nlog_features = true")
        )
        assert main(["run", "-c", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert "state.log_features = true with format.output='avro'" in err
        assert len(err.splitlines()) == 1


def test_time_since_last_is_in_seconds() -> None:
    config = state_settings(
        [{"name": "gap", "key": "$key", "agg": "time_since_last", "window": "1d", "default": -1}]
    )
    applier = StateApplier(config, "t")  # type: ignore[arg-type]
    results = applier.apply([0, 1], [b"k", b"k"], [b"{}", b"{}"], [1000, 3500])
    assert [orjson.loads(r.enriched or b"null")["gap"] for r in results] == [-1.0, 2.5]
    assert not math.isnan(results[1].features[0])
