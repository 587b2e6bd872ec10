"""Generate -> execute -> feed the error back -> retry, with ``SandboxExecutor``.

A real program would ask an LLM for code and pass the previous error along. Here a scripted
generator plays that part (a fixed list of attempts), so the example runs offline: with no
E2B_API_KEY set, sandboxes run on a private local E2B-compatible service.

Run it with ``python examples/refine_loop.py``; it exits 0 once an attempt passes the check.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap

from e2b_kernel import SandboxExecutor

TASK = "Define median(values) returning the median of a list of numbers."

# The check runs after each attempt, in the same sandbox: state persists between calls.
CHECK = textwrap.dedent(
    """
    assert median([3, 1, 2]) == 2, median([3, 1, 2])
    assert median([4, 1, 3, 2]) == 2.5, median([4, 1, 3, 2])
    print("all checks passed")
    """
)

ATTEMPTS = [
    # 1: forgets to sort -> the check's assertion fails
    """
    def median(values):
        middle = len(values) // 2
        return values[middle]
    """,
    # 2: sorts, but ignores even lengths -> the check fails again
    """
    def median(values):
        ordered = sorted(values)
        return ordered[len(ordered) // 2]
    """,
    # 3: correct
    """
    def median(values):
        ordered = sorted(values)
        middle, odd = divmod(len(ordered), 2)
        if odd:
            return ordered[middle]
        return (ordered[middle - 1] + ordered[middle]) / 2
    """,
]


class ScriptedGenerator:
    """Stands in for an LLM: returns the next attempt, given the task and the last error."""

    def __init__(self, attempts: list[str]) -> None:
        self._attempts = [textwrap.dedent(a).strip() + "\n" for a in attempts]

    def generate(self, task: str, feedback: str | None) -> str | None:
        """Return the next attempt, or None when out of ideas."""
        if feedback:
            last_line = feedback.splitlines()[0]
            print(f"  feedback for the generator: {last_line}")
        return self._attempts.pop(0) if self._attempts else None


async def refine(generator: ScriptedGenerator, max_rounds: int = 5) -> bool:
    """Run attempts until one passes the check; return whether one did."""
    async with SandboxExecutor(default_timeout=30) as executor:
        feedback: str | None = None
        for round_number in range(1, max_rounds + 1):
            code = generator.generate(TASK, feedback)
            if code is None:
                break
            print(f"round {round_number}: running {len(code.splitlines())} lines")
            result = await executor.execute({"code": code + CHECK})
            if result["success"]:
                print(f"  success in sandbox {result['sandbox_id']}: {result['output'].strip()}")
                return True
            feedback = result["error"]
    print("no attempt passed")
    return False


def main() -> int:
    return 0 if asyncio.run(refine(ScriptedGenerator(ATTEMPTS))) else 1


if __name__ == "__main__":
    sys.exit(main())
