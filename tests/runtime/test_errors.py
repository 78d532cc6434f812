from dsa_runtime.errors import EXIT_CODE_MEANINGS, ExitCode


def test_codes_are_distinct_and_documented():
    values = [int(c) for c in ExitCode]
    assert len(values) == len(set(values))
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)


def test_codes_avoid_sglang_and_signal_ranges():
    for code in ExitCode:
        assert code == 0 or 64 <= code < 128
