"""The one parallelism argument ``pool`` (kerneleft.maps.as_map) and its record in result meta."""
import numpy as np
import pytest

from kerneleft import network_from_dict
from kerneleft.ensemble import simulate
from kerneleft.errors import InputError
from kerneleft.maps import ProcessMap, SerialMap, as_map, describe, local_workers


def test_as_map_cases():
    assert isinstance(as_map(None), SerialMap) and isinstance(as_map(1), SerialMap)
    m = as_map(np.int64(3))
    assert isinstance(m, ProcessMap) and m.workers == 3 and describe(m) == "processes(3)"
    custom = lambda fn, tasks: map(fn, tasks)          # noqa: E731
    assert as_map(custom) is custom and describe(as_map(None)) == "serial"
    assert local_workers(m) == 3 and local_workers(custom) == 1
    assert list(as_map(None)(abs, [-1, 2, -3])) == [1, 2, 3]
    for bad, msg in ((0, "must be an integer >= 1"), (True, "must be None, a number"), (2.0, "must be None, a number"),
                     ("2", "must be None, a number"), (10 ** 6, "1000000 local worker processes")):
        with pytest.raises(InputError, match=f"^pool: {msg}"):
            as_map(bad)


def test_pool_recorded_and_numbers_independent_of_it():
    net = network_from_dict({"activation": "tanh", "C_W": 1.0, "T": 1.0, "depth": 2, "K_in": [[1.0, 0.4], [0.4, 1.0]]})
    kw = dict(width=4, samples=40, seed=5, chunk_size=8, progress=False)
    serial, two = simulate(net, **kw), simulate(net, pool=2, **kw)
    assert serial.meta["pool"] == "serial" and serial.meta["workers"] == 1
    assert two.meta["pool"] == "processes(2)" and two.meta["workers"] == 2
    assert all(np.array_equal(serial.arrays[k], two.arrays[k]) for k in serial.arrays)


def _blas_threads(_):
    from threadpoolctl import threadpool_info
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_workers_share_the_cpus_as_blas_threads():
    # each of k workers uses at most cpus // k BLAS threads (no oversubscription when the workers run concurrently)
    from kerneleft.maps import blas_threads
    assert blas_threads(1) >= blas_threads(2) >= 1 and blas_threads(10 ** 6) == 1
    per_worker = list(ProcessMap(2)(_blas_threads, range(4)))
    assert all(t and max(t) <= blas_threads(2) for t in per_worker)
