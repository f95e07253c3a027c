import pytest

from IBISAgentLib.models.weights import (
    DEFAULT_MLLM,
    DEFAULT_SAM2,
    DownloadProgress,
    HubRef,
    WeightsUnavailable,
    is_hub_ref,
    mllm_spec,
    resolve_mllm_folder,
    resolve_sam2_file,
    sam2_spec,
)
from IBISAgentLib.workflow import BackendChoice


def test_defaults_come_from_flags_then_environment_then_release(monkeypatch):
    monkeypatch.delenv("IBISAGENT_MLLM", raising=False)
    monkeypatch.delenv("IBISAGENT_SAM2", raising=False)
    assert (mllm_spec(None), sam2_spec(None)) == (DEFAULT_MLLM, DEFAULT_SAM2)
    monkeypatch.setenv("IBISAGENT_MLLM", "/models/ibis")
    monkeypatch.setenv("IBISAGENT_SAM2", "/models/medsam2.pt")
    assert (mllm_spec(None), sam2_spec(None)) == ("/models/ibis", "/models/medsam2.pt")
    assert mllm_spec("flag") == "flag"


def test_hub_references():
    assert HubRef.parse(DEFAULT_MLLM) == HubRef("manglu3935/IBIS", "qwen2_5vl-7b-RL")
    assert HubRef.parse("wanglab/MedSAM2:MedSAM2_latest.pt").path == "MedSAM2_latest.pt"
    assert is_hub_ref(DEFAULT_MLLM) and is_hub_ref("owner/repo")
    assert not is_hub_ref("./models/x") and not is_hub_ref("/abs/path") and not is_hub_ref("plainname")


def test_local_paths(tiny_models, tmp_path):
    mllm, medsam2 = tiny_models
    assert resolve_mllm_folder(str(mllm)) == mllm
    assert resolve_sam2_file(str(medsam2)) == medsam2
    with pytest.raises(WeightsUnavailable, match=r"no config\.json"):
        resolve_mllm_folder(str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="no such checkpoint file"):
        resolve_sam2_file(str(tmp_path / "nothing.pt"))


def test_offline_hub_download_names_what_to_fetch_and_where(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as raised:
        resolve_mllm_folder(DEFAULT_MLLM)
    message = str(raised.value)
    assert "hf download manglu3935/IBIS --include 'qwen2_5vl-7b-RL/*' --local-dir DIR" in message
    assert "--mllm DIR/qwen2_5vl-7b-RL" in message and "IBISAGENT_MLLM=" in message
    with pytest.raises(WeightsUnavailable) as raised:
        resolve_sam2_file(DEFAULT_SAM2)
    assert "hf download wanglab/MedSAM2 MedSAM2_latest.pt --local-dir DIR" in str(raised.value)
    assert "--sam2 DIR/MedSAM2_latest.pt" in str(raised.value)


def test_hub_cache_is_used_offline(monkeypatch, tmp_path):
    """A file already in the Hugging Face cache resolves without the network."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = cache / "models--wanglab--MedSAM2" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (snapshot / "MedSAM2_latest.pt").write_bytes(b"cached weights")
    (cache / "models--wanglab--MedSAM2" / "refs").mkdir()
    (cache / "models--wanglab--MedSAM2" / "refs" / "main").write_text(snapshot.name)
    assert resolve_sam2_file(DEFAULT_SAM2).read_bytes() == b"cached weights"


def test_download_progress_goes_to_the_given_tqdm_class(monkeypatch, tmp_path):
    """The Slicer module passes its own tqdm class to show a progress dialog; huggingface_hub must get it."""
    import huggingface_hub
    from tqdm import tqdm

    class Progress(tqdm):
        pass

    seen = {}

    def fake_download(repo_id, filename, **kwargs):
        seen.update(kwargs)
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve_sam2_file(DEFAULT_SAM2, tqdm_class=Progress) == tmp_path / "MedSAM2_latest.pt"
    assert seen["tqdm_class"] is Progress


def _cache_medsam2(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    snapshot = cache / "models--wanglab--MedSAM2" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (snapshot / "MedSAM2_latest.pt").write_bytes(b"cached weights")
    (cache / "models--wanglab--MedSAM2" / "refs").mkdir()
    (cache / "models--wanglab--MedSAM2" / "refs" / "main").write_text(snapshot.name)


def test_a_choice_names_the_weights_it_would_download_from_the_cache_alone(monkeypatch, tmp_path):
    """What a page says at once when the models are missing: only what is not cached, with how to fetch it;
    nothing for a server, an endpoint or the classical segmenter. The network is never asked (a closed port
    as the hub endpoint would fail or hang an attempt)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("IBISAGENT_MLLM", raising=False)
    monkeypatch.delenv("IBISAGENT_SAM2", raising=False)
    _cache_medsam2(monkeypatch, tmp_path)
    missing = BackendChoice().missing_weights()
    assert len(missing) == 1 and missing[0].startswith(f"{DEFAULT_MLLM} (--mllm) is not on this computer.")
    assert "hf download manglu3935/IBIS --include 'qwen2_5vl-7b-RL/*' --local-dir DIR" in missing[0]
    missing = BackendChoice(sam2="sam2.1-hiera-l", propagator="medsam2").missing_weights()
    assert [m.split(" ")[0] for m in missing] == [DEFAULT_MLLM, "facebook/sam2.1-hiera-large:sam2.1_hiera_large.pt"]
    assert BackendChoice(mllm="http://127.0.0.1:9/v1", sam2="classical").missing_weights() == []
    assert BackendChoice(server="http://127.0.0.1:9").missing_weights() == []


def test_download_progress_is_one_line_for_the_page():
    progress = DownloadProgress()
    bar = progress.tqdm_class()(total=3 * 2**20, unit="B", desc="MedSAM2_latest.pt", disable=False)
    bar.update(2**20)
    assert progress.text == "Downloading MedSAM2_latest.pt: 1 of 3 MiB"
    bar.close()
