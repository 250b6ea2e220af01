"""A scripted pick-and-place expert for LIBERO that reads the simulator's privileged state.

The expert solves tasks whose BDDL goal is a single `(In obj region)` or `(On obj target)` predicate
(libero_object "pick X and place it in the basket", the bowl-on-plate tasks of libero_spatial /
libero_goal, ...). Each step it looks up the object and target poses in MuJoCo (`sim.data`), the
axis-aligned box of their collision geoms (so it knows how tall an object is and where its top
is), and runs a waypoint state machine:

    approach (above the object) -> descend -> close -> lift -> carry (above the target)
    -> lower -> release -> retreat

Actions are what LIBERO's OSC_POSE controller takes: delta position (3, scaled by 0.05 m), delta
axis-angle (3, scaled by 0.5 rad), gripper (-1 open, +1 close). Translation comes from a clipped
proportional law, so the magnitudes look like teleoperated demos (|a| <= `max_action` = 0.9375, the
SpaceMouse range of the released LIBERO data); rotation only holds the start orientation, turned
about the vertical when the object is easier to grasp across its other side. Everything is a
deterministic function of the simulator state, so an episode is reproducible from its init state.

Success is the environment's own `done` (the BDDL goal predicate), measured by `run_expert`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# MuJoCo geom types (mjtGeom)
_PLANE, _HFIELD, _SPHERE, _CAPSULE, _ELLIPSOID, _CYLINDER, _BOX, _MESH = 0, 1, 2, 3, 4, 5, 6, 7
POS_SCALE = 0.05  # OSC_POSE output_max for position (m per unit action)
ROT_SCALE = 0.5  # OSC_POSE output_max for rotation (rad per unit action)
FINGER_BELOW_EEF = 0.012  # the fingertips reach this far below the eef site (grip_site)


class ExpertError(RuntimeError):
    """The task is not one the scripted expert can plan (unsupported goal, unknown object)."""


@dataclass
class ExpertConfig:
    max_action: float = 0.9375  # largest |translation| / |rotation| entry, as in the released demos
    pos_gain: float = 1.0  # action = clip((pos_gain * error - vel_damping * last step's motion) / POS_SCALE)
    vel_damping: float = 2.0  # brakes before a waypoint so the OSC lag does not overshoot it
    settle_speed: float = 0.004  # m per step: slower than this counts as stopped above a point
    rot_gain: float = 1.0  # rotation action = clip(rot_gain * angle error / ROT_SCALE)
    approach_height: float = 0.08  # hover this far above the grasp point before descending
    grasp_depth: float = 0.03  # grasp this far below an object's top (clamped to its middle)
    min_grasp_z: float = 0.015  # eef at least this far above the support surface (flat boxes: fingertips at the table)
    lift_clearance: float = 0.06  # carried object's bottom this far above the target's top
    release_clearance: float = 0.025  # lower the object to this far above the target's top, then open
    xy_tol: float = 0.012  # xy error (m) that counts as above a point
    z_tol: float = 0.01  # z error (m) that counts as at a height
    close_steps: int = 12  # steps with the gripper closing before lifting
    release_steps: int = 10  # steps with the gripper open before retreating
    max_phase_steps: int = 80  # a phase that takes longer moves on (approach/carry) or retries the grasp
    max_grasp_tries: int = 2
    retreat_steps: int = 40  # stop this many steps after the release (or after giving up): no success will follow
    yaw_align: bool = True  # turn the gripper about the vertical to grasp across the narrow side, clear of neighbours
    finger_span: float = 0.075  # widest object the open gripper holds comfortably


# -- simulator geometry ---------------------------------------------------------------------------
def _subtree_bodies(model, root: int) -> set[int]:
    bodies = {root}
    for b in range(model.nbody):
        p = b
        while p not in bodies and p != 0:
            p = model.body_parentid[p]
        if p in bodies:
            bodies.add(b)
    return bodies


def _geom_points(model, data, g: int) -> np.ndarray:
    """World-frame points that bound geom `g` (box corners; a sphere's box for round shapes)."""
    pos, mat, size = data.geom_xpos[g], data.geom_xmat[g].reshape(3, 3), model.geom_size[g]
    gtype = model.geom_type[g]
    if gtype == _BOX:
        half = size[:3]
    elif gtype == _CYLINDER:
        half = np.array([size[0], size[0], size[1]])
    elif gtype == _CAPSULE:
        half = np.array([size[0], size[0], size[1] + size[0]])
    elif gtype == _ELLIPSOID:
        half = size[:3]
    elif gtype == _MESH:
        adr, num = model.mesh_vertadr[model.geom_dataid[g]], model.mesh_vertnum[model.geom_dataid[g]]
        verts = np.asarray(model.mesh_vert[adr: adr + num], dtype=np.float64)
        return pos + verts @ mat.T
    else:  # sphere and anything else: its bounding sphere
        half = np.full(3, float(model.geom_rbound[g]) or float(size[0]))
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    return pos + corners @ mat.T


@dataclass
class BodyGeometry:
    """Collision geoms of one body subtree: world points, their box, the horizontal minor axis."""

    points: np.ndarray  # (N, 3)
    lo: np.ndarray  # (3,)
    hi: np.ndarray  # (3,)

    @property
    def center(self) -> np.ndarray:
        return (self.lo + self.hi) / 2

    @property
    def size(self) -> np.ndarray:
        return self.hi - self.lo


class SceneQuery:
    """Privileged look-ups in a LIBERO env (the robosuite env behind OffScreenRenderEnv)."""

    def __init__(self, inner_env):
        self.env = inner_env
        self.model = inner_env.sim.model
        self._geoms: dict[int, list[int]] = {}

    def body_id(self, name: str) -> int:
        ids = getattr(self.env, "obj_body_id", {})
        if name in ids:
            return ids[name]
        try:
            return self.model.body_name2id(name)
        except ValueError:
            raise ExpertError(f"no body named {name!r}; objects: {sorted(ids)}") from None

    def _collision_geoms(self, body: int) -> list[int]:
        if body not in self._geoms:
            bodies = _subtree_bodies(self.model, body)
            m = self.model
            geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies and (m.geom_contype[g] or m.geom_conaffinity[g])]
            if not geoms:  # visual-only object: use every geom
                geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies]
            if not geoms:
                raise ExpertError(f"body {m.body_id2name(body)!r} has no geoms")
            self._geoms[body] = geoms
        return self._geoms[body]

    def geometry(self, name: str) -> BodyGeometry:
        body = self.body_id(name)
        data = self.env.sim.data
        pts = np.concatenate([_geom_points(self.model, data, g) for g in self._collision_geoms(body)])
        return BodyGeometry(pts, pts.min(0), pts.max(0))

    def obstacles(self, exclude: str) -> list[tuple[np.ndarray, float, float]]:
        """(xy points, bottom z, top z) of every collision geom of the task's objects and fixtures
        except `exclude`'s (each geom is convex, so its xy points bound a convex footprint)."""
        names = list(getattr(self.env, "objects_dict", {})) + list(getattr(self.env, "fixtures_dict", {}))
        skip = set(self._collision_geoms(self.body_id(exclude)))
        out = []
        for name in names:
            try:
                body = self.body_id(name)
                geoms = self._collision_geoms(body)
            except ExpertError:
                continue
            for g in geoms:
                if g in skip:
                    continue
                pts = _geom_points(self.model, self.env.sim.data, g)
                out.append((pts[:, :2], float(pts[:, 2].min()), float(pts[:, 2].max())))
        return out

    def body_pos(self, name: str) -> np.ndarray:
        return np.array(self.env.sim.data.body_xpos[self.body_id(name)])

    def site_pos(self, name: str) -> np.ndarray:
        return np.array(self.env.sim.data.get_site_xpos(name))


# -- goals ------------------------------------------------------------------------------------------
@dataclass
class PickPlaceGoal:
    obj: str  # object to pick (body / BDDL name)
    target: str  # object (body) it goes into / onto
    target_site: str | None = None  # region site whose centre is the place point (In ... _contain_region)
    relation: str = "in"


def parse_goal(inner_env) -> PickPlaceGoal:
    """The single pick-and-place predicate of a task's BDDL goal, or ExpertError."""
    goal = inner_env.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("in", "on"):
        raise ExpertError(f"scripted expert handles one (In obj region) / (On obj target) goal, got {goal}")
    rel, obj, where = goal[0][0].lower(), goal[0][1], goal[0][2]
    objects = getattr(inner_env, "objects_dict", {})
    fixtures = getattr(inner_env, "fixtures_dict", {})
    sites = getattr(inner_env, "object_sites_dict", {})
    if obj not in objects:
        raise ExpertError(f"goal object {obj!r} is not a movable object of the task ({sorted(objects)})")
    if where in objects or where in fixtures:
        return PickPlaceGoal(obj, where, None, rel)
    if where in sites:
        parent = sites[where].parent_name
        return PickPlaceGoal(obj, parent, where, rel)
    raise ExpertError(f"goal target {where!r} is neither an object nor a region")


# -- rotations --------------------------------------------------------------------------------------
def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _mat_to_axisangle(r: np.ndarray) -> np.ndarray:
    cos = np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if np.pi - angle < 1e-6:  # 180 degrees: axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(r) + 1) / 2, 0, None))
        k = int(np.argmax(axis))
        axis[[i for i in range(3) if i != k]] *= np.sign(r[k, [i for i in range(3) if i != k]] + 1e-12)
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * np.sin(angle))
    return axis * angle


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _minor_axis_yaw(points: np.ndarray) -> tuple[float, float, float]:
    """(yaw of the narrow horizontal direction, narrow width, wide width) from points' xy spread."""
    xy = points[:, :2] - points[:, :2].mean(0)
    best = None
    for yaw in np.linspace(0, np.pi, 36, endpoint=False):
        d = np.array([np.cos(yaw), np.sin(yaw)])
        w = float(np.ptp(xy @ d))
        if best is None or w < best[1]:
            best = (yaw, w)
    yaw, narrow = best
    wide = float(np.ptp(xy @ np.array([-np.sin(yaw), np.cos(yaw)])))
    return yaw, narrow, wide


# Parts of the Panda hand around the eef site, in the gripper frame (u = closing axis, v = across it):
# (centre along u, half length along u, half width along v, bottom z relative to the eef site).
HAND_BOXES = (
    (0.0, 0.105, 0.035, 0.03),  # the hand body, wide along the closing axis
    (0.052, 0.014, 0.013, -0.012),  # finger 1 (open)
    (-0.052, 0.014, 0.013, -0.012),  # finger 2 (open)
)
_SAT_AXES = np.array([[np.cos(a), np.sin(a)] for a in np.deg2rad(np.arange(0.0, 180.0, 10.0))])


def _footprint_hits(center: np.ndarray, yaw: float, eef_z: float, obstacles, margin: float = 0.008) -> float:
    """How badly the open gripper at (center, eef_z), fingers closing along `yaw`, would sit in other
    geoms: the summed height (m) by which overlapping geoms rise above the part they overlap."""
    u = np.array([np.cos(yaw), np.sin(yaw)])
    v = np.array([-u[1], u[0]])
    axes = np.concatenate([_SAT_AXES, u[None], v[None]])
    total = 0.0
    for off, hu, hv, dz in HAND_BOXES:
        c = center + off * u
        bottom = eef_z + dz
        rect_half = (hu + margin) * np.abs(axes @ u) + (hv + margin) * np.abs(axes @ v)
        rect_c = axes @ c
        for xy, _lo, top in obstacles:
            if top <= bottom:
                continue
            proj = xy @ axes.T  # (k, n_axes)
            separated = (proj.max(0) < rect_c - rect_half) | (proj.min(0) > rect_c + rect_half)
            if not separated.any():
                total += top - bottom
    return total


# -- the expert -------------------------------------------------------------------------------------
PHASES = ("approach", "descend", "close", "lift", "carry", "lower", "release", "retreat")


@dataclass
class _Memory:
    phase: str = "approach"
    phase_steps: int = 0
    tries: int = 0
    ref_rot: np.ndarray | None = None  # orientation to hold (3x3)
    start_rot: np.ndarray | None = None  # orientation at the start of the episode
    grasp_xy: np.ndarray | None = None
    grasp_z: float = 0.0
    hold_offset: float = 0.0  # object bottom below the eef once grasped
    lift_z: float = 0.0
    last_eef: np.ndarray | None = None
    motion: np.ndarray = field(default_factory=lambda: np.zeros(3))  # eef displacement over the last step
    phase_log: list = field(default_factory=list)


class PickPlaceExpert:
    """Closed-loop waypoint expert for one LIBERO env; `reset()` per episode, then `act(obs)` per step."""

    def __init__(self, env, config: ExpertConfig | None = None):
        self.cfg = config or ExpertConfig()
        self.inner = getattr(env, "env", env)  # LiberoEnv -> OffScreenRenderEnv
        self.inner = getattr(self.inner, "env", self.inner)  # OffScreenRenderEnv -> robosuite env
        self.scene = SceneQuery(self.inner)
        self.goal = parse_goal(self.inner)
        self.mem = _Memory()

    # bookkeeping
    def reset(self) -> None:
        self.mem = _Memory()

    @property
    def phase(self) -> str:
        return self.mem.phase

    @property
    def finished(self) -> bool:
        """Nothing left to do: retreated long enough after the release, or gave up the grasp. An episode
        that has not succeeded by then will not, so recording stops instead of idling to max_steps."""
        return self.mem.phase == "retreat" and self.mem.phase_steps >= self.cfg.retreat_steps

    def _goto(self, phase: str) -> None:
        self.mem.phase_log.append((self.mem.phase, self.mem.phase_steps))
        self.mem.phase, self.mem.phase_steps = phase, 0

    # geometry
    def _target_point(self) -> tuple[np.ndarray, float]:
        """(xy of the place point, top z of the target)."""
        tgeo = self.scene.geometry(self.goal.target)
        xy = self.scene.site_pos(self.goal.target_site)[:2] if self.goal.target_site else tgeo.center[:2]
        return xy, float(tgeo.hi[2])

    def _plan_grasp(self, obs: dict) -> None:
        cfg, m = self.cfg, self.mem
        geo = self.scene.geometry(self.goal.obj)
        m.grasp_xy = geo.center[:2].copy()
        height = float(geo.size[2])
        m.grasp_z = max(geo.hi[2] - min(cfg.grasp_depth, height / 2), geo.lo[2] + cfg.min_grasp_z)
        if m.start_rot is None:
            m.start_rot = _quat_xyzw_to_mat(obs["robot0_eef_quat"])
        m.ref_rot = m.start_rot
        if cfg.yaw_align:
            close_dir = m.start_rot[:, 1]  # the fingers close along the gripper's y axis
            cur = float(np.arctan2(close_dir[1], close_dir[0]))
            yaw = self._closing_yaw(geo, m.grasp_z, cur)
            delta = (yaw - cur + np.pi / 2) % np.pi - np.pi / 2  # the nearer of the two symmetric ways
            if abs(delta) > np.deg2rad(2):
                m.ref_rot = _rot_z(delta) @ m.start_rot

    def _closing_yaw(self, geo: BodyGeometry, grasp_z: float, current: float) -> float:
        """Direction (yaw, mod pi) in which the fingers close: across the object's narrow side, turned
        as little as needed so that the hand and fingers miss the neighbouring objects."""
        cfg = self.cfg
        minor, _narrow, _ = _minor_axis_yaw(geo.points)
        xy = geo.points[:, :2] - geo.center[:2]
        obstacles = self.scene.obstacles(exclude=self.goal.obj)
        best, best_cost = minor, np.inf
        for yaw in np.deg2rad(np.arange(0.0, 180.0, 5.0)):
            u = np.array([np.cos(yaw), np.sin(yaw)])
            width = float(np.ptp(xy @ u))
            off_minor = abs((yaw - minor + np.pi / 2) % np.pi - np.pi / 2)
            turn = abs((yaw - current + np.pi / 2) % np.pi - np.pi / 2)
            cost = off_minor + 0.1 * turn + 50.0 * max(0.0, width - cfg.finger_span)
            cost += 10.0 * _footprint_hits(geo.center[:2], yaw, grasp_z, obstacles)
            if cost < best_cost - 1e-9:
                best, best_cost = yaw, cost
        return float(best)

    # control
    def _action(self, obs: dict, target: np.ndarray, gripper: float) -> np.ndarray:
        cfg = self.cfg
        err = np.asarray(target, dtype=np.float64) - obs["robot0_eef_pos"]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%-8s %3d eef %s target %s grip %s", self.mem.phase, self.mem.phase_steps,
                      np.round(obs["robot0_eef_pos"], 3), np.round(target, 3), np.round(obs["robot0_gripper_qpos"], 3))
        pos = np.clip((cfg.pos_gain * err - cfg.vel_damping * self.mem.motion) / POS_SCALE, -cfg.max_action, cfg.max_action)
        rot = np.zeros(3)
        if self.mem.ref_rot is not None:
            cur = _quat_xyzw_to_mat(obs["robot0_eef_quat"])
            aa = _mat_to_axisangle(self.mem.ref_rot @ cur.T)
            rot = np.clip(cfg.rot_gain * aa / ROT_SCALE, -cfg.max_action, cfg.max_action)
        return np.concatenate([pos, rot, [gripper]])

    def act(self, obs: dict) -> np.ndarray:
        cfg, m = self.cfg, self.mem
        if m.grasp_xy is None:
            self._plan_grasp(obs)
        m.phase_steps += 1
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        m.motion = np.zeros(3) if m.last_eef is None else eef - m.last_eef
        m.last_eef = eef.copy()
        still = float(np.linalg.norm(m.motion[:2])) < cfg.settle_speed
        phase = m.phase
        if phase == "approach":
            geo = self.scene.geometry(self.goal.obj)  # follow the object if it was nudged
            m.grasp_xy = geo.center[:2].copy()
            target = np.array([*m.grasp_xy, m.grasp_z + cfg.approach_height])
            if np.linalg.norm(target[:2] - eef[:2]) < cfg.xy_tol and abs(target[2] - eef[2]) < 2 * cfg.z_tol \
                    and still or m.phase_steps > cfg.max_phase_steps:
                self._goto("descend")
            return self._action(obs, target, -1.0)
        if phase == "descend":
            target = np.array([*m.grasp_xy, m.grasp_z])
            if abs(target[2] - eef[2]) < cfg.z_tol or m.phase_steps > cfg.max_phase_steps // 2:
                self._goto("close")
            return self._action(obs, target, -1.0)
        if phase == "close":
            target = np.array([*m.grasp_xy, m.grasp_z])
            if m.phase_steps >= cfg.close_steps:
                geo = self.scene.geometry(self.goal.obj)
                m.hold_offset = eef[2] - geo.lo[2]
                _, ttop = self._target_point()
                m.lift_z = max(ttop + cfg.lift_clearance + m.hold_offset, m.grasp_z + 0.1)
                self._goto("lift")
            return self._action(obs, target, 1.0)
        if phase == "lift":
            target = np.array([*m.grasp_xy, m.lift_z])
            if m.phase_steps == 8 and not self._holding(obs):
                return self._retry(obs)
            if abs(target[2] - eef[2]) < 2 * cfg.z_tol or m.phase_steps > cfg.max_phase_steps:
                self._goto("carry")
            return self._action(obs, target, 1.0)
        if phase == "carry":
            xy, _ = self._target_point()
            target = np.array([*xy, m.lift_z])
            if m.phase_steps % 10 == 0 and not self._holding(obs):
                return self._retry(obs)
            if np.linalg.norm(target[:2] - eef[:2]) < cfg.xy_tol or m.phase_steps > cfg.max_phase_steps:
                self._goto("lower")
            return self._action(obs, target, 1.0)
        if phase == "lower":
            xy, ttop = self._target_point()
            z = ttop + cfg.release_clearance + m.hold_offset
            target = np.array([*xy, min(z, m.lift_z)])
            if abs(target[2] - eef[2]) < cfg.z_tol or m.phase_steps > cfg.max_phase_steps // 2:
                self._goto("release")
            return self._action(obs, target, 1.0)
        if phase == "release":
            xy, _ = self._target_point()
            target = np.array([*xy, eef[2]])
            if m.phase_steps >= cfg.release_steps:
                self._goto("retreat")
            return self._action(obs, target, -1.0)
        # retreat: straight up, gripper open, until the episode ends
        target = np.array([eef[0], eef[1], m.lift_z + 0.05])
        return self._action(obs, target, -1.0)

    def _holding(self, obs: dict) -> bool:
        """The object rides with the gripper: fingers not shut, object bottom close under the eef."""
        fingers = float(np.sum(np.abs(obs["robot0_gripper_qpos"])))
        geo = self.scene.geometry(self.goal.obj)
        near = abs((obs["robot0_eef_pos"][2] - geo.lo[2]) - self.mem.hold_offset) < 0.03
        return fingers > 0.004 and near

    def _retry(self, obs: dict) -> np.ndarray:
        m = self.mem
        m.tries += 1
        log.debug("grasp lost in phase %s; try %d", m.phase, m.tries)
        if m.tries >= self.cfg.max_grasp_tries:
            self._goto("retreat")
        else:
            m.grasp_xy = None
            self._plan_grasp(obs)
            self._goto("approach")
        return self._action(obs, np.array([*obs["robot0_eef_pos"][:2], obs["robot0_eef_pos"][2] + 0.02]), -1.0)


# -- measurement ----------------------------------------------------------------------------------
@dataclass
class EpisodeResult:
    suite: str
    task_id: int
    episode: int
    success: bool
    steps: int  # policy steps (wait steps excluded)
    wall_s: float
    phases: list = field(default_factory=list)  # (phase, steps) in order
    demo: object | None = None  # RawDemo when recorded

    def to_dict(self) -> dict:
        return {"suite": self.suite, "task_id": self.task_id, "episode": self.episode, "success": self.success,
                "steps": self.steps, "wall_s": round(self.wall_s, 2), "phases": [list(p) for p in self.phases]}


def run_expert(suite: str, task_id: int, episode_ids, *, resolution: int = 128, config: ExpertConfig | None = None,
               max_steps: int | None = None, record: bool = False, env=None, progress: bool = True,
               env_seed: int = 0) -> list[EpisodeResult]:
    """Run the expert on init states `episode_ids` of one task; success is the env's `done`.

    With `record=True` each result carries a `RawDemo` (worldvla.data.raw_demos) with images at
    `resolution`. `max_steps` defaults to the suite's evaluation budget. Pass `env` (a LiberoEnv of
    the same task) to reuse one.
    """
    from worldvla.data.raw_demos import record_rollout
    from worldvla.envs.libero import LiberoEnv

    own_env = env is None
    env = env or LiberoEnv(suite, task_id, resolution=resolution, env_seed=env_seed)
    try:
        expert = PickPlaceExpert(env, config)
        max_steps = max_steps or env.max_steps
        results = []
        iterator = list(episode_ids)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc=f"{suite} task {task_id}", unit="ep")
        for ep in iterator:
            expert.reset()
            t0 = time.perf_counter()
            demo = record_rollout(env, lambda t, obs: None if expert.finished else expert.act(obs), episode=ep,
                                  max_steps=max_steps, record_obs=record)
            wall = time.perf_counter() - t0
            expert.mem.phase_log.append((expert.mem.phase, expert.mem.phase_steps))
            res = EpisodeResult(suite, task_id, ep, demo.success, len(demo), wall, list(expert.mem.phase_log),
                                demo if record else None)
            results.append(res)
            log.info("%s task %d episode %d: %s in %d steps (%.1f s)", suite, task_id, ep,
                     "success" if res.success else "FAIL", res.steps, wall)
            if progress:
                iterator.set_postfix(ok=sum(r.success for r in results), n=len(results))
        return results
    finally:
        if own_env:
            env.close()


# -- recording --------------------------------------------------------------------------------------
def parse_ids(text: str | int | list) -> list[int]:
    """'0,1,5-7' -> [0, 1, 5, 6, 7] (ranges inclusive); ints and lists pass through."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, (list, tuple)):
        return [int(x) for x in text]
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if not lo.isdigit() or not hi.isdigit() or int(hi) < int(lo):
                raise ValueError(f"bad id range {part!r} in {text!r} (use e.g. 0-9)")
            out.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise ValueError(f"bad id {part!r} in {text!r} (use e.g. 0,1,5-7)")
    if not out:
        raise ValueError(f"no ids in {text!r}")
    return out


@dataclass
class RecordScriptedConfig:
    suite: str = "libero_object"  # LIBERO suite
    tasks: str = "0"  # task ids, e.g. 0,1 or 0-3
    episodes: str = "0-9"  # init-state ids to attempt, e.g. 0-9
    out: str = "data/raw/libero_object"  # gets <task.name>_demo.hdf5 + success_report.json
    resolution: int = 128  # camera px of the recorded images (released raw LIBERO demos: 128)
    max_steps: int = 0  # policy-step budget per attempt; 0 = the suite's evaluation budget
    env_seed: int = 0
    keep_failures: bool = False  # also write failed attempts (real LIBERO files hold successes only)
    overwrite: bool = False  # redo every attempt instead of resuming from <out>/.parts/


REPORT_NAME = "success_report.json"
PARTS_DIR = ".parts"  # finished attempts of unfinished tasks (resume); removed when a task is merged


def _atomic_write_json(path: Path, obj) -> None:
    import json

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def machine_info() -> dict:
    """Where the figures were measured: they depend on the CPU and on what else ran."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in load]}


def _run_key(cfg: RecordScriptedConfig, expert_config: ExpertConfig) -> dict:
    """What makes a recorded attempt reusable: anything else changes the demos."""
    return {"suite": cfg.suite, "resolution": cfg.resolution, "max_steps": cfg.max_steps, "env_seed": cfg.env_seed,
            "keep_failures": cfg.keep_failures, "expert": asdict(expert_config)}


def _load_report(path: Path, cfg: RecordScriptedConfig, key: dict) -> dict:
    import json

    if not path.is_file():
        return {"tasks": {}}
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it or pass overwrite=true") from None
    if report.get("suite") not in (None, cfg.suite):
        raise ValueError(f"{path}: field 'suite' is {report['suite']!r}, not {cfg.suite!r}; use another out=")
    if report.get("run_key") not in (None, key) and not cfg.overwrite:
        raise ValueError(f"{path}: field 'run_key' differs from this run's settings (resolution, max_steps, "
                         f"env_seed, keep_failures, expert); pass overwrite=true or use another out=")
    return report


def _check_parts(part_dir: Path, key: dict) -> None:
    """Attempts kept from an interrupted run are reused only if they were made with the same settings."""
    import json

    stamp = part_dir / "run_key.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != key:
        raise ValueError(f"{stamp}: attempts recorded with other settings (resolution, max_steps, env_seed, "
                         f"keep_failures, expert); pass overwrite=true or use another out=")
    part_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(stamp, key)


def _task_done(entry: dict | None, episodes: list[int], out: Path) -> bool:
    return bool(entry) and entry.get("episode_ids") == episodes and (
        entry.get("file") is None or (out / entry["file"]).is_file())


def _attempt(cfg: RecordScriptedConfig, expert_config: ExpertConfig, env, meta: dict, part_dir: Path, ep: int) -> dict:
    """One attempt, saved as `ep_<ep>.json` (+ `ep_<ep>.hdf5` when kept) in `part_dir`; reused on rerun."""
    import json

    from worldvla.data.raw_demos import write_raw_demo_file

    entry_path = part_dir / f"ep_{ep}.json"
    if entry_path.is_file():
        return json.loads(entry_path.read_text())
    (res,) = run_expert(cfg.suite, env.task_id, [ep], config=expert_config, env=env, record=True,
                        max_steps=cfg.max_steps or None, progress=False)
    entry = res.to_dict()
    entry["part"] = None
    if res.success or cfg.keep_failures:
        entry["part"] = write_raw_demo_file(part_dir / f"ep_{ep}.hdf5", meta, [res.demo]).name
    _atomic_write_json(entry_path, entry)  # written last: the attempt counts as done only with its demo
    return entry


def _merge_task(path: Path, meta: dict, part_dir: Path, entries: list[dict]) -> list[str]:
    """Copy the kept attempts, in episode order, into one LIBERO demo file as demo_0, demo_1, ..."""
    from worldvla.data.raw_demos import RawDemoWriter

    kept = [e for e in entries if e.get("part")]
    if not kept:
        for e in entries:
            e["demo"] = None
        return []
    with RawDemoWriter(path, meta) as writer:  # tmp file + rename on a clean exit
        for e in entries:
            e["demo"] = writer.copy_from(part_dir / e["part"], "demo_0", f"demo_{len(writer.names)}") \
                if e.get("part") else None
    return list(writer.names)


def _summarise(report: dict) -> None:
    tasks = report["tasks"].values()
    report["attempts"] = sum(t["attempts"] for t in tasks)
    report["successes"] = sum(t["successes"] for t in tasks)
    report["success_rate"] = report["successes"] / max(report["attempts"], 1)


def record_scripted_demos(cfg: RecordScriptedConfig, expert_config: ExpertConfig | None = None,
                          progress: bool = True) -> dict:
    """Attempt every (task, episode) with the expert and write, per task, the successful demos to
    `<out>/<task.name>_demo.hdf5` (raw LIBERO layout) and every attempt to `<out>/success_report.json`.

    Resumable: each finished attempt is kept under `<out>/.parts/task_<id>/` until its task's file is
    written, and a task whose file and report entry exist for the same episode list is skipped. The
    report (written atomically after every task) keeps the entries of tasks not in this run.
    Returns the report dict.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # per-attempt log lines above the progress bar, not through it
        return _record(cfg, expert_config or ExpertConfig(), progress)


def _record(cfg: RecordScriptedConfig, expert_config: ExpertConfig, progress: bool) -> dict:
    import shutil

    from tqdm import tqdm

    from worldvla.data.raw_demos import raw_demo_filename, task_meta_from_env
    from worldvla.envs.libero import LiberoEnv

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task_ids, episodes = parse_ids(cfg.tasks), parse_ids(cfg.episodes)
    key = _run_key(cfg, expert_config)
    report_path = out / REPORT_NAME
    if cfg.overwrite:
        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    report = {"tasks": {}} if cfg.overwrite else _load_report(report_path, cfg, key)
    report.update({"suite": cfg.suite, "resolution": cfg.resolution, "env_seed": cfg.env_seed, "run_key": key,
                   "success_predicate": "env.step done (the task's BDDL goal)"})
    report.setdefault("tasks", {})
    bar = tqdm(total=len(task_ids) * len(episodes), desc=f"record {cfg.suite}", unit="ep", disable=not progress)
    for tid in task_ids:
        if _task_done(report["tasks"].get(str(tid)), episodes, out):
            log.info("%s task %d: already recorded (%s), skipped", cfg.suite, tid, report["tasks"][str(tid)]["file"])
            bar.update(len(episodes))
            continue
        part_dir = out / PARTS_DIR / f"task_{tid}"
        _check_parts(part_dir, key)
        env = LiberoEnv(cfg.suite, tid, resolution=cfg.resolution, env_seed=cfg.env_seed)
        try:
            meta = {**task_meta_from_env(env), "source": "worldvla scripted expert"}
            PickPlaceExpert(env, expert_config)  # raises ExpertError now on an unsupported goal
            entries = []
            for ep in episodes:
                entries.append(_attempt(cfg, expert_config, env, meta, part_dir, ep))
                bar.update(1)
                bar.set_postfix(task=tid, ok=f"{sum(e['success'] for e in entries)}/{len(entries)}")
            path = out / raw_demo_filename(env.task.name)
            names = _merge_task(path, meta, part_dir, entries)
            if not names:
                log.warning("%s task %d: no successful demo, no file written", cfg.suite, tid)
            n_ok = sum(e["success"] for e in entries)
            steps = [e["steps"] for e in entries if e["success"]]
            for e in entries:
                e.pop("part", None)
            report["tasks"][str(tid)] = {
                "task_name": env.task.name, "language": env.language, "file": path.name if names else None,
                "episode_ids": episodes, "attempts": len(entries), "successes": n_ok,
                "success_rate": n_ok / len(entries), "mean_steps_success": float(np.mean(steps)) if steps else None,
                "wall_s": round(sum(e["wall_s"] for e in entries), 1), "episodes": entries,
            }
            report["machine"] = machine_info()
            _summarise(report)
            _atomic_write_json(report_path, report)
            shutil.rmtree(part_dir, ignore_errors=True)
            log.info("%s task %d (%s): %d/%d successes; wrote %d demos to %s", cfg.suite, tid, env.task.name,
                     n_ok, len(entries), len(names), path if names else "-")
        finally:
            env.close()
    bar.close()
    _summarise(report)
    _atomic_write_json(report_path, report)
    parts = out / PARTS_DIR
    if parts.is_dir() and not any(parts.iterdir()):
        parts.rmdir()
    log.info("success report: %s (%d/%d attempts succeeded overall)", report_path, report["successes"],
             report["attempts"])
    return report
