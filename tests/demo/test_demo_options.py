"""`rlhf demo`'s options are checked before anything starts: a bad value exits at once with a message
naming the option (no server, no worker, no model download)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RLHF = [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())"]   # this checkout's CLI


@pytest.mark.parametrize("args, message", [
    (["--decoding", "nope"], "--decoding must be a JSON object"),
    (["--decoding", "[1]"], "--decoding must be a JSON object"),
    (["--decoding", '{"presence_penalty": 3}'], "presence_penalty 3 is out of range"),
    (["--decoding", '{"no_repeat_ngram_size": 3}'], "unknown decoding key 'no_repeat_ngram_size'"),
    (["--repetition-penalty", "0"], "repetition_penalty 0.0 is out of range"),
    (["--rm", "{"], "--rm must be a JSON object"),
])
def test_bad_options_exit_with_a_message(args, message, tmp_path):
    proc = subprocess.run([*RLHF, "demo", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()
