"""The shutdown in a topology: the final commit and commits that fail."""

from __future__ import annotations

from streamer.core.model import LinearModel
from tests.unit.fakes import wait_until
from tests.unit.topology.helpers import PARTITIONS, PER_PARTITION, dataset, settings, start


class TestCommitErrors:
    def test_failing_commits_never_crash_the_pipeline_and_are_retried(
        self, demo: LinearModel
    ) -> None:
        data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
        pipeline, kafka, _registry = start(data, settings())
        consumer = kafka.consumer
        consumer.commit_error = RuntimeError("CommitFailedError: the group rebalanced")
        ends = dict.fromkeys(data.records, PER_PARTITION)
        wait_until(lambda: pipeline.consumer_status()["watermarks"] == ends, timeout=15)
        assert pipeline.failure is None
        assert all(ref.is_alive() for ref in [pipeline.consumer_ref, pipeline.producer_ref])
        assert pipeline.consumer_status()["committed"] != ends
        consumer.commit_error = None
        report = pipeline.stop()
        assert (report.exit_code, report.committed) == (0, ends)
        assert consumer.last_commit() == ends

    def test_a_final_commit_that_fails_is_reported_not_raised(self, demo: LinearModel) -> None:
        data = dataset(demo.spec, 1, 100)
        pipeline, kafka, _registry = start(data, settings())
        ends = dict.fromkeys(data.records, 100)
        wait_until(lambda: pipeline.consumer_status()["watermarks"] == ends, timeout=15)
        kafka.consumer.commit_error = RuntimeError("CommitFailedError: the group rebalanced")
        report = pipeline.stop()
        assert report.exit_code == 1
        assert report.failure is not None
        assert "CommitFailedError: the group rebalanced" in report.failure
        assert report.committed == {}
