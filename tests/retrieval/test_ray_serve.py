"""Search served by Ray actors on a real two-node Ray cluster on this machine (issue 28): a
head and a second node started with `ray start` (127.0.0.1 only, one CPU each, their own
ports and temp folder), an "ivfpq" index whose shard groups land on both nodes, hits equal
to the single-process search, and a shard actor killed while queries run."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain import toy as toys
from simexplain.cli import main
from simexplain.errors import SimexplainError
from simexplain.retrieval import Index, RegionQuery
from simexplain.retrieval.ray_engine import _connect

RAY = Path(sys.executable).with_name("ray")
SIDE = 32
START_TIMEOUT = 60
# Ray reads its authentication settings when it is imported: the test cluster and this
# driver use token authentication with a token of their own, set here, before the tests
# (collected after this file) import Ray, and kept for the session (local Ray instances of
# later tests then use it too). Where Ray was imported before, this driver runs without
# authentication and so does the test cluster.
RAY_IMPORTED_BEFORE = "ray" in sys.modules
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if not RAY_IMPORTED_BEFORE and "RAY_AUTH_MODE" not in os.environ:
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_node(temp: Path, log: Path, ports: list[int], head: bool) -> subprocess.Popen:
    """`ray start --block` for one node, in its own process group (stopped by the fixture).
    `ports`: the head's port, then 7 free ports of this node's own."""
    head_port = ports[0]
    node_manager, object_manager, agent, agent_grpc, metrics, runtime_env, dashboard = ports[1:8]
    # 40 worker ports a node, below the ephemeral range the other ports come from
    first_worker = 10000 + (os.getpid() * 97) % 20000 + (0 if head else 50)
    args = [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
            f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
            f"--min-worker-port={first_worker}", f"--max-worker-port={first_worker + 39}",
            "--object-store-memory=100000000", "--disable-usage-stats"]
    if head:
        args += ["--head", f"--port={head_port}", "--include-dashboard=false",
                 f"--dashboard-port={dashboard}",
                 f"--temp-dir={temp}"]
    else:
        args += [f"--address=127.0.0.1:{head_port}"]
    environment = dict(os.environ)
    if "RAY_AUTH_MODE" not in environment:  # see RAY_IMPORTED_BEFORE
        environment["RAY_AUTH_MODE"] = "disabled"
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                start_new_session=True)


def stop_node(process: subprocess.Popen) -> None:
    """SIGKILL to the node's process group: its `ray start --block` and every process it
    started (GCS, raylet, workers), only what this fixture started. (A SIGTERM makes Ray drain
    the node for up to a minute.)"""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-node Ray cluster on 127.0.0.1 (shut down even on failure)."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    temp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths
    log = temp / "nodes.log"
    ports = free_ports(15)  # all at once: no port handed out twice
    head_port = ports[0]
    nodes = []
    try:
        nodes.append(start_node(temp, log, ports[:8], head=True))
        _wait(lambda: _port_open(head_port), "the head node of the test cluster", log)
        nodes.append(start_node(temp, log, ports[:1] + ports[8:], head=False))
        address = f"127.0.0.1:{head_port}"
        # this driver joins once, as `Index.load(engine="ray", ray={"address": ...})` does
        # (simexplain shipped to the workers); the indexes below then use that connection
        _wait(lambda: _joined(ray, address), "a driver connection to the test cluster", log)
        _wait(lambda: sum(n["Alive"] for n in ray.nodes()) == 2,
              "the second node of the test cluster", log)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(nodes):
            stop_node(node)
        shutil.rmtree(temp, ignore_errors=True)


def _joined(ray, address: str) -> bool:
    """Join the cluster (False while its head still comes up)."""
    try:
        _connect(ray, address, 1)
    except SimexplainError:
        return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(ready, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not start in {START_TIMEOUT} s: {tail}")
        time.sleep(0.25)


def clustered(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    return (centres[rng.integers(0, 40, n)]
            + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)), centres


@pytest.fixture(scope="module")
def vectors_index(tmp_path_factory):
    gallery, centres = clustered(6000, 16, 0)
    index = Index.from_vectors(gallery, similarity="cosine", kind="ivfpq",
                               params={"shards": 4, "candidates": 64})
    path = tmp_path_factory.mktemp("served") / "index"
    index.save(path)
    rng = np.random.default_rng(1)
    queries = []
    for _ in range(12):  # region vectors q_R with their whole-image embedding e_a
        a, b = centres[rng.integers(0, 40, 2)]
        part = 0.6 * a + 0.2 * rng.standard_normal(16)
        queries.append((part, part + 0.4 * b))
    return path, queries


def hits_of(index: Index, queries) -> list:
    out = []
    for q, e in queries:
        out.append(index.search_vector(q, 10, e))  # region search, ranked by s_R
        out.append(index.search_vector(e, 10))  # whole-image search
    return out


def same_hits(got, expected) -> bool:
    return all([h.index for h in a] == [h.index for h in b]
               and np.allclose([h.score for h in a], [h.score for h in b], rtol=0, atol=1e-6)
               and np.allclose([h.full_score for h in a], [h.full_score for h in b], rtol=0,
                               atol=1e-6)
               for a, b in zip(got, expected, strict=True))


def test_ray_actors_on_two_nodes_answer_as_one_process(cluster, vectors_index):
    path, queries = vectors_index
    local = Index.load(path)
    expected = hits_of(local, queries)
    served = Index.load(path, engine="ray", ray={"address": cluster, "actors": 2})
    try:
        actors = served.vectors.describe()
        assert len({a["node"] for a in actors}) == 2  # one shard group on each node
        assert [a["rows"] for a in actors] == [3000, 3000]
        assert same_hits(hits_of(served, queries), expected)
        # the candidates really are fanned out: other settings, still the local hits
        for index in (local, served):
            index.params.update(nprobe=4, candidates=16)
        assert same_hits(hits_of(served, queries), hits_of(local, queries))
    finally:
        served.close()


def test_a_killed_shard_actor_is_restarted_and_the_query_retried(cluster, vectors_index):
    path, queries = vectors_index
    expected = hits_of(Index.load(path), queries)
    served = Index.load(path, engine="ray", ray={"address": cluster, "actors": 2})
    try:
        victim = served.vectors.describe()[1]
        results: list = []
        failures: list = []

        def query_loop():
            try:
                for _ in range(4):
                    results.append(hits_of(served, queries))
            except Exception as exc:  # reported below, not lost in the thread
                failures.append(exc)

        worker = threading.Thread(target=query_loop)
        worker.start()
        _wait(lambda: results or failures, "the first query")
        os.kill(victim["pid"], signal.SIGKILL)  # while the loop keeps querying
        worker.join(timeout=90)
        assert not worker.is_alive() and not failures, failures
        assert len(results) == 4 and all(same_hits(r, expected) for r in results)
        after = served.vectors.describe()[1]
        assert after["pid"] != victim["pid"] and after["rows"] == victim["rows"]  # restarted
        assert same_hits(hits_of(served, queries), expected)
    finally:
        served.close()


def test_region_queries_of_a_model_index_on_the_cluster(cluster, tmp_path):
    """A gallery indexed with a model: a query image's region (q_R of `RegionQuery`) and the
    whole image give the local hits, explanations included."""
    explainer = toys.toy_explainer(dim=8, channels=8, depth=2, size=SIDE)
    folder = tmp_path / "gallery"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(120):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            folder / f"img_{i:03d}.png")
    Index.build(folder, explainer, "toy", progress=False, out=tmp_path / "index",
                kind="ivfpq", shards=2)
    local = Index.load(tmp_path / "index", explainer=explainer)
    served = Index.load(tmp_path / "index", explainer=explainer, engine="ray",
                        ray={"address": cluster})
    try:
        side = explainer.side(torch.rand(1, 3, SIDE, SIDE,
                                         generator=torch.Generator().manual_seed(2)), "a")
        for prepared in (RegionQuery.from_side(side),
                         RegionQuery.from_side(side, (0, 0, 16, 20))):
            want = local.search(prepared, k=5, explain=True)
            got = served.search(prepared, k=5, explain=True)
            assert same_hits([got], [want])
            assert [h.path for h in got] == [h.path for h in want]
            for a, b in zip(got, want):
                torch.testing.assert_close(a.overall_map, b.overall_map)
        # the web app of `simexplain serve --engine ray` on this index: the same region hits
        from fastapi.testclient import TestClient
        from simexplain.web.app import create_app
        sample = Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
        answers = []
        for index in (local, served):
            app = create_app(explainer=explainer, model="toy", index=index,
                             samples=[("query", sample)])
            with TestClient(app, base_url="http://localhost") as client:
                response = client.post("/api/search", json={"query": "s0", "k": 6,
                                                            "box": [0, 0, 16, 20]})
                assert response.status_code == 200, response.text
                answers.append([(h["index"], round(h["score"], 6))
                                for h in response.json()["hits"]])
        assert answers[0] == answers[1] and len(answers[0]) == 6
    finally:
        served.close()


def test_damage_found_by_a_shard_actor_is_one_line(cluster, vectors_index, tmp_path):
    """The NaN check of the rows is the actors' (the driver does not read every float): a
    NaN in the second group's rows is refused in one line naming the file."""
    path, _ = vectors_index
    copy = tmp_path / "index"
    shutil.copytree(path, copy)
    floats = np.load(copy / "embeddings.npy", mmap_mode="r+")
    floats[4500, 3] = np.nan
    floats.flush()
    del floats
    with pytest.raises(SimexplainError, match="index damaged.*embeddings.npy.*NaN") as caught:
        Index.load(copy, verify=False, engine="ray", ray={"address": cluster})
    assert "\n" not in str(caught.value)


def test_ray_engine_refusals(tmp_path, capsys):
    index = Index.from_vectors(np.random.default_rng(0).standard_normal((50, 4)), kind="flat")
    index.save(tmp_path / "flat")
    with pytest.raises(SimexplainError, match="one structure.*ivfpq"):
        Index.load(tmp_path / "flat", engine="ray")
    with pytest.raises(SimexplainError, match="unknown engine"):
        Index.load(tmp_path / "flat", engine="spark")
    assert main(["serve", "--engine", "ray"]) == 2
    assert "give --index" in capsys.readouterr().err
