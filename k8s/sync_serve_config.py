"""Copy serve_configs/gpu.yaml into the RayService's serveConfigV2 (k8s/rayservice.yaml).

    python k8s/sync_serve_config.py          # rewrite the block in place
    python k8s/sync_serve_config.py --check  # exit 1 if the block is stale (what the test checks)

One serve config for both ways of running on a cluster (`serve deploy serve_configs/gpu.yaml`
on a launcher cluster, the RayService on Kubernetes): the RayService embeds the file verbatim
from its first setting on, so the two never drift. Only the leading comment block is left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVE = REPO / "serve_configs" / "gpu.yaml"
RAYSERVICE = REPO / "k8s" / "rayservice.yaml"
KEY = "  serveConfigV2: |"


def serve_block(serve_text: str, indent: str = "    ") -> list[str]:
    lines = serve_text.rstrip("\n").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#"))
    return [f"{indent}{ln}" if ln.strip() else "" for ln in lines[start:]]


def render(rayservice_text: str, serve_text: str) -> str:
    lines = rayservice_text.splitlines()
    try:
        at = lines.index(KEY)
    except ValueError:
        raise SystemExit(f"{RAYSERVICE}: no line {KEY.strip()!r}") from None
    end = at + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith("    ")):
        end += 1
    while end > at + 1 and not lines[end - 1].strip():  # keep the blank line before the next key
        end -= 1
    return "\n".join(lines[: at + 1] + serve_block(serve_text) + lines[end:]) + "\n"


def main(argv: list[str]) -> int:
    new = render(RAYSERVICE.read_text(), SERVE.read_text())
    if "--check" in argv:
        if new != RAYSERVICE.read_text():
            print(f"{RAYSERVICE} is stale: run python k8s/sync_serve_config.py", file=sys.stderr)
            return 1
        return 0
    RAYSERVICE.write_text(new)
    print(f"wrote serveConfigV2 of {RAYSERVICE} from {SERVE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
