from dsa_runtime.node import Gpu, gpus_from_nvidia_smi_output, model_present, shm_size_bytes


def test_parse_nvidia_smi():
    gpus = gpus_from_nvidia_smi_output("NVIDIA H200, 9.0\nNVIDIA H200, 9.0\n\n")
    assert gpus == [Gpu("NVIDIA H200", "9.0")] * 2
    assert gpus[0].arch == "sm90"


def test_arch_names():
    assert Gpu("NVIDIA B200", "10.0").arch == "sm100"
    assert Gpu("NVIDIA B300", "10.3").arch == "sm103"
    assert Gpu("AMD Instinct MI300X", "").arch == "amd"


def test_shm_and_model(tmp_path):
    assert shm_size_bytes(str(tmp_path)) > 0
    assert shm_size_bytes(str(tmp_path / "absent")) is None
    assert not model_present(str(tmp_path / "absent"))
    assert not model_present(str(tmp_path))  # empty
    (tmp_path / "config.json").write_text("{}")
    assert model_present(str(tmp_path))
