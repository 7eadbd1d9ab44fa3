"""The README's Python snippets run as written, in order, against the builtin base."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.cli_helpers import project_with_adapters

REPO = Path(__file__).resolve().parents[1]

# Runs the blocks in one namespace, as a reader pasting them into one session would. LangChain's
# deprecation warnings are errors: the README must show the idioms that are not deprecated.
RUNNER = textwrap.dedent("""
    import json, sys, warnings
    from langchain_core._api.deprecation import LangChainDeprecationWarning, LangChainPendingDeprecationWarning

    warnings.simplefilter("error", LangChainDeprecationWarning)
    warnings.simplefilter("error", LangChainPendingDeprecationWarning)
    namespace = {"__name__": "__readme__"}
    for block in json.load(sys.stdin):
        exec(compile(block, "README.md", "exec"), namespace)
    history, state = namespace["history"], namespace["state"]
    print(json.dumps({"history": [m.type for m in history], "thread": [m.type for m in state["messages"]],
                      "adapter": namespace["reply"].response_metadata["adapter"]}))
""")


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_python_blocks_run_as_written(tmp_path):
    blocks = python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 4 and any("ChatGlmbot()" in b for b in blocks)
    config = project_with_adapters(tmp_path)
    env = {"GLMBOT_CONFIG": str(config), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "GLMBOT_ENTRY_POINTS": "0"}
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.splitlines()[-1])
    assert facts["history"] == ["human", "ai", "human", "ai"]
    assert facts["thread"] == ["human", "ai", "human", "ai"]  # the checkpointer kept the first round
    assert facts["adapter"] is None  # "你好" is general chat: the plain base answers it
