"""Shared, session-scoped models for the caching tests: a tiny GPT-2 and a tiny U-Net, split and compiled once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import optc
from optc.passes.caching import derive_kv_cache, split_deep_cache
from optc.tools.bench_caching import build_decoder, kv_check_feeds
from optc.tools.denoiser import build_unet, capture_unet

CAPACITY = 20
PROMPT = 6


@pytest.fixture(scope="session")
def decoder():
    return build_decoder("tiny", CAPACITY, seed=0)


@pytest.fixture(scope="session")
def kv_split(decoder):
    return derive_kv_cache(decoder, prompt_length=PROMPT)


@pytest.fixture(scope="session")
def kv_artifact(kv_split, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kv") / "artifact"
    optc.compile_entries(kv_split.entries, state=kv_split.state, passes="cleanup",
                         check_feeds=kv_check_feeds(kv_split), output=path)
    return path


@pytest.fixture(scope="session")
def unet_model():
    return build_unet(seed=0, width=16)


@pytest.fixture(scope="session")
def unet(unet_model):
    return capture_unet(unet_model)


@pytest.fixture(scope="session")
def unet_split(unet):
    return split_deep_cache(unet, depth=1)


@pytest.fixture(scope="session")
def unet_artifact(unet_split, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("unet") / "artifact"
    optc.compile_entries(unet_split.entries, state=unet_split.state, passes="cleanup", output=path)
    return path


@pytest.fixture()
def unet_feeds():
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((1, 1, 8, 8)).astype(np.float32), "t": np.array([400.0], np.float32)}
