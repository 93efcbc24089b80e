"""Multi-entry artifacts: manifest, loading, sessions that thread state, and ``optc run --entry``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import optc
from optc.backends.artifact import read_manifest
from optc.errors import ArtifactError, InputError
from optc.ir.interpret import interpret
from optc.passes.caching import CachedDenoiser, uniform_schedule
from optc.tools.cli import main as cli


def test_manifest_lists_entries_signatures_and_state(unet_artifact, unet_split):
    manifest = read_manifest(unet_artifact)
    assert manifest["default_entry"] == "full"
    assert list(manifest["entries"]) == ["full", "cached"]
    assert manifest["entries"]["full"]["path"] == "."
    assert manifest["entries"]["cached"]["path"] == "entries/cached"
    assert [item["name"] for item in manifest["entries"]["cached"]["inputs"]] == ["x", "t", "deep_feature"]
    assert manifest["state"]["deep_feature"] == {
        "shape": list(unet_split.info["branch"].shape), "dtype": "float32", "init": "none",
        "inputs": {"cached": "deep_feature"}, "outputs": {"full": "deep_feature"}}
    assert "entries/cached/model.so" in manifest["files"]
    # the default entry is an ordinary single-entry artifact for the tools that read one graph
    assert [item["name"] for item in manifest["inputs"]] == ["x", "t"]
    assert set(manifest["entry_checks"]) == {"full", "cached"}
    assert all(check["cosine"] > 0.9999 for check in manifest["entry_checks"].values())


def test_loaded_entries_match_the_reference(unet_artifact, unet_split, unet_feeds):
    artifact = optc.load_artifact(unet_artifact)
    assert artifact.entry_names == ["full", "cached"]
    full = artifact.run(unet_feeds, entry="full")
    expected = interpret(unet_split["full"], unet_feeds)
    np.testing.assert_allclose(full["eps"], expected["eps"], atol=1e-4)
    cached = artifact.entry("cached").run(dict(unet_feeds, deep_feature=expected["deep_feature"]))
    np.testing.assert_allclose(cached["eps"], expected["eps"], atol=1e-4)
    with pytest.raises(InputError, match="entry points: full, cached"):
        artifact.entry("decode")


def test_session_threads_the_feature_from_full_to_cached(unet_artifact, unet_feeds):
    artifact = optc.load_artifact(unet_artifact)
    session = artifact.session()
    with pytest.raises(InputError, match="run 'full' first"):
        session.run("cached", unet_feeds)
    full = session.run("full", unet_feeds)
    assert set(full) == {"eps"}  # state outputs stay in the session
    cached = session.run("cached", unet_feeds)
    np.testing.assert_allclose(cached["eps"], full["eps"], atol=1e-5)
    with pytest.raises(InputError, match="are state"):
        session.run("cached", dict(unet_feeds, deep_feature=session.state("deep_feature")))
    with pytest.raises(InputError, match="float32"):
        session.set_state("deep_feature", np.zeros(3))


def test_sampling_loop_with_the_schedule_runs_the_cached_step_between_full_ones(unet_artifact, unet_feeds):
    artifact = optc.load_artifact(unet_artifact)
    denoise = CachedDenoiser(artifact.session())
    flags = uniform_schedule(7, 3)
    outputs = [denoise(step, full, unet_feeds)["eps"] for step, full in enumerate(flags)]
    assert denoise.counts == {"full": 3, "cached": 4}
    for output in outputs:  # same inputs every step: reuse is exact
        np.testing.assert_allclose(output, outputs[0], atol=1e-5)


def test_kv_artifact_has_prefill_and_decode_with_zero_initialized_caches(kv_artifact):
    manifest = read_manifest(kv_artifact)
    assert list(manifest["entries"]) == ["prefill", "decode"]
    assert all(state["init"] == "zeros" for state in manifest["state"].values())
    assert manifest["state"]["value_cache_1"]["outputs"] == {"prefill": "present_value_1", "decode": "present_value_1"}


def test_optc_run_and_inspect_know_the_entries(unet_artifact, unet_feeds, tmp_path, capsys):
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, deep_feature=np.zeros((1, 32, 8, 8), np.float32), **unet_feeds)
    assert cli(["run", str(unet_artifact), "--entry", "cached", "--inputs", str(feeds)]) == 0
    assert "entry 'cached'" in capsys.readouterr().out
    assert cli(["run", str(unet_artifact), "--entry", "nope"]) == 2
    assert "no entry point 'nope'" in capsys.readouterr().err
    assert cli(["inspect", str(unet_artifact)]) == 0
    out = capsys.readouterr().out
    assert "entry point full (default)" in out and "entry point cached" in out and "state deep_feature" in out


def test_tampered_entry_library_is_refused(unet_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(unet_artifact, copy)
    with open(copy / "entries" / "cached" / "model.so", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        optc.load_artifact(copy)


def test_unlisted_entry_files_are_refused(unet_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(unet_artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["entries/cached/model.so"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not in the manifest"):
        optc.load_artifact(copy)


def test_bad_state_tables_are_refused_before_compiling(unet_split):
    with pytest.raises(InputError, match="no input 'nope'"):
        optc.compile_entries(unet_split.entries, state={"f": {"inputs": {"cached": "nope"}}})
    with pytest.raises(InputError, match="entry point name"):
        optc.compile_entries({"bad/name": unet_split["full"]})
    state = {"f": {"inputs": {"cached": "x"}, "outputs": {"full": "deep_feature"}}}
    with pytest.raises(InputError, match="one static type"):
        optc.compile_entries(unet_split.entries, state=state)


def test_single_entry_artifacts_expose_one_entry(unet_split, unet_feeds, tmp_path):
    artifact = optc.compile(unet_split["cached"], passes="cleanup", output=tmp_path / "single", check=False)
    loaded = optc.load_artifact(tmp_path / "single")
    assert loaded.entries is None and loaded.entry_names == [unet_split["cached"].name]
    feeds = dict(unet_feeds, deep_feature=np.zeros((1, 32, 8, 8), np.float32))
    np.testing.assert_allclose(loaded.entry().run(feeds)["eps"], artifact.run(feeds)["eps"], atol=1e-6)
    with pytest.raises(ArtifactError, match="one entry point"):
        loaded.entry("other")


class _CounterModel:
    """A compiled model without ``run_device`` (as the mcu target's C bundles): NumPy in, NumPy out."""

    def run(self, feeds):
        total = feeds["count"] + feeds["increment"]
        return {"total": total.copy(), "next_count": total}


def test_sessions_thread_numpy_state_through_models_without_a_device():
    from optc.backends.entries import EntryModel, StateBuffer

    state = {"count": StateBuffer("count", (2,), "int64", "zeros", {"step": "count"}, {"step": "next_count"})}
    session = EntryModel({"step": _CounterModel()}, state).session()
    totals = [session.run("step", {"increment": np.array([1, 2])})["total"].tolist() for _ in range(3)]
    assert totals == [[1, 2], [2, 4], [3, 6]]
    session.set_state("count", np.array([10, 10]))
    assert session.run("step", {"increment": np.array([1, 1])})["total"].tolist() == [11, 11]
    session.reset()
    assert session.state("count").tolist() == [0, 0]


def test_entries_store_only_the_weights_they_do_not_share(kv_artifact):
    manifest = read_manifest(kv_artifact)
    decode = manifest["entries"]["decode"]
    assert any(name.endswith("lm_head.weight") for name in decode["shared_params"])
    top = manifest["files"]["graph.safetensors"]["size"]
    own = manifest["files"]["entries/decode/graph.safetensors"]["size"]
    assert own < top / 20  # prefill's weights are not stored twice
