"""The released WorldVLA / RynnVLA-002 checkpoints and the inference settings each one needs.

An official folder holds only config.json and the weights: nothing in it says K, the history, the
resolution, the statistics set or the views, and a wrong guess does not fail, it just scores lower
(a libero_10 model queried at K = 5, a RynnVLA-002 model without its wrist view). So
`WorldVLAPolicy.from_pretrained` takes those settings from this table, found by hub id
(`Alibaba-DAMO-Academy/WorldVLA/model_256/libero_10`), by the folder of a local download
(`.../model_256/libero_10`, `.../WorldVLA-ActionModel-LIBERO-10-256`) or by a Hugging Face cache
path (`.../models--Alibaba-DAMO-Academy--WorldVLA/snapshots/<sha>/model_256/libero_10`). A folder
that is in neither the table nor a worldvla checkpoint must get its settings explicitly.

Sources (read October/November 2025; docs/official_format.md §12 has the table with its evidence):
- WorldVLA README model zoo: `Alibaba-DAMO-Academy/WorldVLA` sub-folders `model_256/<suite>` and
  `model_512/<suite>`; K from the official training configs (`..._ck_5_...` for spatial, object and
  goal, `..._ck_10_...` for libero_10), history 2, third-person view only, no state, the WorldVLA
  action statistics (hard-coded in its item processor and eval).
- `jcenaa/WorldVLA-ActionModel-LIBERO-{Spatial,Object,Goal,10}-{256,512}`: the same eight action
  models re-uploaded as separate repos by the first author (model listing on the hub). Only the
  args.json of `...-10-512` was read (its data configs say `ck_10`); the others are assumed to equal
  their `model_<res>/<suite>` twin. UNCONFIRMED beyond that.
- RynnVLA-002 README model zoo: `Alibaba-DAMO-Academy/RynnVLA-002` sub-folders `VLA_model_256/<suite>`;
  its eval scripts: `time_horizon` 10 for spatial and libero_10, 5 for object and goal,
  `--his his_2_third_view_wrist_w_state` (history 2, third-person + wrist, state), the RynnVLA-002
  action statistics in its LIBERO eval. Continuous (action head) is the headline mode; the same
  weights also run `action_mode=discrete`.
- RynnVLA-002 `World_model_512/<suite>` and `Action_World_model_512/<suite>`: world models evaluated
  at 512 px with third-person + wrist, history 1, the WorldVLA action statistics (its world-model eval
  uses the plain action processor). They are for `worldvla.eval.imagine`, not for LIBERO rollouts:
  their action-side settings (K, state) are UNCONFIRMED and set to K = 1 without state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

from worldvla.recipe import Recipe

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
WORLDVLA_REPO = "Alibaba-DAMO-Academy/WorldVLA"
RYNNVLA_REPO = "Alibaba-DAMO-Academy/RynnVLA-002"
JCENAA_NAMES = {"libero_spatial": "Spatial", "libero_object": "Object", "libero_goal": "Goal", "libero_10": "10"}

WORLDVLA_K = {"libero_spatial": 5, "libero_object": 5, "libero_goal": 5, "libero_10": 10}
RYNNVLA_K = {"libero_spatial": 10, "libero_object": 5, "libero_goal": 5, "libero_10": 10}

# Fields an unknown official folder must be given (the ones that differ between released setups and
# fail silently when wrong); every other Recipe field then keeps the plain WorldVLA default.
REQUIRED_FOR_UNKNOWN = ("chunk_size", "resolution", "action_stats")


@dataclass(frozen=True)
class OfficialCheckpoint:
    hub_id: str  # owner/name[/sub/folder]
    suite: str
    purpose: str  # "policy" (LIBERO rollouts) | "world" (world-model imagination only)
    settings: dict = field(default_factory=dict)  # Recipe fields
    confirmed: str = ""  # what the settings were read from

    @property
    def folder_key(self) -> str:
        """The folder part that identifies a local download: `model_256/libero_10`, or the repo name."""
        parts = self.hub_id.split("/")
        return "/".join(parts[2:]) if len(parts) > 2 else parts[1]

    def recipe(self) -> Recipe:
        """The released checkpoint's Recipe (what its missing worldvla.json would say), tagged with its hub id."""
        recipe = Recipe(**self.settings)
        recipe.extra["official_checkpoint"] = self.hub_id
        return recipe


def _worldvla(res: int, suite: str) -> dict:
    return {"chunk_size": WORLDVLA_K[suite], "history": 2, "resolution": res, "action_stats": "worldvla",
            "with_state": False, "with_wrist": False, "action_mode": "discrete", "family": "worldvla"}


def _build() -> list[OfficialCheckpoint]:
    table = []
    for res in (256, 512):
        for suite in SUITES:
            settings = _worldvla(res, suite)
            jc = f"jcenaa/WorldVLA-ActionModel-LIBERO-{JCENAA_NAMES[suite]}-{res}"
            table.append(OfficialCheckpoint(f"{WORLDVLA_REPO}/model_{res}/{suite}", suite, "policy", settings,
                                            confirmed="WorldVLA README model zoo + training configs (ck_K)"))
            table.append(OfficialCheckpoint(jc, suite, "policy", settings,
                                            confirmed=("its args.json (ck_10)" if (suite, res) == ("libero_10", 512)
                                                       else f"assumed equal to model_{res}/{suite} (UNCONFIRMED)")))
    for suite in SUITES:
        table.append(OfficialCheckpoint(
            f"{RYNNVLA_REPO}/VLA_model_256/{suite}", suite, "policy",
            {"chunk_size": RYNNVLA_K[suite], "history": 2, "resolution": 256, "action_stats": "rynnvla_action",
             "world_action_stats": "worldvla", "state_stats": "rynnvla_state", "with_state": True,
             "with_wrist": True, "action_mode": "continuous", "family": "rynnvla002"},
            confirmed="RynnVLA-002 README model zoo + evals_libero scripts (time_horizon, his)"))
        for kind in ("World_model_512", "Action_World_model_512"):
            table.append(OfficialCheckpoint(
                f"{RYNNVLA_REPO}/{kind}/{suite}", suite, "world",
                {"chunk_size": 1, "history": 1, "resolution": 512, "action_stats": "worldvla", "with_state": False,
                 "with_wrist": True, "action_mode": "discrete", "family": "rynnvla002"},
                confirmed="RynnVLA-002 README + world-model eval (512 px, third + wrist, his 1); "
                          "action settings UNCONFIRMED"))
    return table


OFFICIAL_CHECKPOINTS: tuple[OfficialCheckpoint, ...] = tuple(_build())
_BY_HUB_ID = {c.hub_id.casefold(): c for c in OFFICIAL_CHECKPOINTS}
_BY_FOLDER = {c.folder_key.casefold(): c for c in OFFICIAL_CHECKPOINTS}
_CACHE_REPO = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


def _hub_id_from_cache_path(parts: list[str]) -> str | None:
    """`.../models--owner--name/snapshots/<sha>/sub/folder` -> `owner/name/sub/folder`."""
    for i, part in enumerate(parts):
        m = _CACHE_REPO.match(part)
        if m and i + 2 < len(parts) and parts[i + 1] == "snapshots" and _SHA.match(parts[i + 2]):
            return "/".join([m["owner"], m["name"], *parts[i + 3:]])
    return None


def find_official(source) -> OfficialCheckpoint | None:
    """The table entry of a hub id, a local download folder or a hub-cache path; None if not listed."""
    text = str(source).strip().rstrip("/\\")
    if not text:
        return None
    hit = _BY_HUB_ID.get(text.casefold())
    if hit is not None:
        return hit
    parts = [p for p in PurePath(text.replace("\\", "/")).parts if p not in ("/", "")]
    cached = _hub_id_from_cache_path(parts)
    if cached is not None:
        return _BY_HUB_ID.get(cached.casefold())
    for n in (2, 1):  # `model_256/libero_10`, then `WorldVLA-ActionModel-LIBERO-10-256`
        if len(parts) >= n:
            hit = _BY_FOLDER.get("/".join(parts[-n:]).casefold())
            if hit is not None:
                return hit
    return None


def unknown_folder_error(folder, given: dict) -> ValueError:
    """The refusal for an official-layout folder that the table does not know and that got too few settings."""
    missing = [k for k in REQUIRED_FOR_UNKNOWN if given.get(k) is None]
    example = ", ".join(f"{k}: ..." for k in missing)
    return ValueError(
        f"{folder} has no worldvla.json and is not a released checkpoint this project knows "
        f"(worldvla.policy.official_checkpoints); its settings would be guesses. Pass {', '.join(missing)} "
        f"(eval/serve: 'policy.recipe={{{example}}}'; python: WorldVLAPolicy.from_pretrained(..., "
        f"{'=..., '.join(missing)}=...)); also with_wrist, with_state, history, family and action_mode if they differ "
        "from plain WorldVLA (no wrist, no state, history 2, discrete). Released folders: model_<256|512>/<suite>, "
        "VLA_model_256/<suite>, WorldVLA-ActionModel-LIBERO-<Suite>-<res>")
