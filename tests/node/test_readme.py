"""The README's first chat, run as written against a real node (only the port differs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.node.helpers import NodeProcess, run_cli

ROOT = Path(__file__).resolve().parents[2]
FAST = {"PARLEY_ARGON2_MEMORY_KIB": "19456", "PARLEY_ARGON2_TIME_COST": "2",
        "PARLEY_ARGON2_PARALLELISM": "1", "PARLEY_ADMIN_PASSWORD": "admin-password"}


def test_readme_first_chat(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None
    env = {**FAST, "PARLEY_DATA_DIR": str(tmp_path / "data")}
    node = NodeProcess("--port", "0", "--ws-port", "0", env=env).start()
    try:
        ws = node.text.split("WebSocket ")[1].split(";")[0]

        def cli(*args: str) -> str:
            r = run_cli(*args, env=env)
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()

        cli("user", "create", "alice", "--generate-password")
        cli("user", "create", "bob", "--generate-password")
        chat_env = {"CONV": cli("conv", "direct", "alice", "bob"),
                    "ALICE": cli("token", "mint", "alice"), "BOB": cli("token", "mint", "bob")}
        script = tmp_path / "chat.py"
        script.write_text(example.group(1).replace("ws://127.0.0.1:8701/v1/ws", ws))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=60, env={**env, **chat_env, "PATH": ""})
        assert out.returncode == 0, out.stderr
        assert "stored as seq 1" in out.stdout
        assert "bob got 'Hello Bob!' from user" in out.stdout
    finally:
        assert node.stop() == 0
