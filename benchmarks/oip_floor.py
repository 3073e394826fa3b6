"""The floor of ``make bench`` (o): a bare asynchronous client loop against an OIP server.

It sends the same micro-batches the daemon sends (the breast-cancer records of
tests/model_zoo.py, ``--batch`` rows each, one FP64 tensor, ``predict_proba``),
``--concurrency`` requests in flight on one aiohttp session, with none of the
daemon's work around them (no Kafka, no JSON decoding of records, no retries),
and prints the records per second as JSON.

    python benchmarks/oip_floor.py --url http://127.0.0.1:8080 --model logreg \
        --records 20000 --batch 100 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.core.models.oip import build_request
from tests import model_zoo as zoo


async def run(args: argparse.Namespace) -> float:
    matrix = zoo.records(args.records).to_numpy()
    url = f"{args.url}/v2/models/{args.model}/infer"
    slots = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 1)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(start: int) -> int:
            rows = matrix[start : start + args.batch]
            async with slots:
                body = build_request(rows, ["input-0"], "FP64", ["predict_proba"])
                async with session.post(url, data=body) as response:
                    payload = await response.read()
                    if response.status != 200:
                        msg = f"HTTP {response.status}: {payload[:200]!r}"
                        raise RuntimeError(msg)
            answer = orjson.loads(payload)["outputs"][0]["data"]
            return int(np.asarray(answer).size // 2)

        await one(0)  # connect and warm up, not timed
        started = time.perf_counter()
        scored = await asyncio.gather(*(one(s) for s in range(0, len(matrix), args.batch)))
        elapsed = time.perf_counter() - started
    assert sum(scored) == len(matrix), (sum(scored), len(matrix))
    return len(matrix) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps({"records_per_s": asyncio.run(run(args))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
