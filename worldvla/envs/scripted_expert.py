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

Success is the environment's own `done` (the BDDL goal predicate), measured by `worldvla.data.recording.run_expert`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

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
