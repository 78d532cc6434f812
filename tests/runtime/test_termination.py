from dsa_runtime.termination import MAX_BYTES, termination_log_path, write_termination


def test_write_and_truncate(tmp_path):
    path = tmp_path / "log"
    write_termination("x" * (MAX_BYTES + 100), str(path))
    assert len(path.read_text()) == MAX_BYTES


def test_unwritable_path_is_ignored(tmp_path):
    write_termination("boom", str(tmp_path / "no" / "dir" / "log"))


def test_path_from_env(monkeypatch):
    monkeypatch.setenv("DSA_TERMINATION_LOG", "/tmp/t")
    assert termination_log_path() == "/tmp/t"
    assert termination_log_path("/x") == "/x"
