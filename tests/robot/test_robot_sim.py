"""The simulated X-Trainer (real MuJoCo): layout, seeding, rendering, safety, the scripted teleoperator."""

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the sim needs the `sim` extra (mujoco)")

from robot.dobot import teleop  # noqa: E402
from robot.sim import model as sim_model  # noqa: E402
from robot.sim.human import HumanConfig, ScriptedHuman  # noqa: E402
from robot.sim.robot_io import SimRobotIO  # noqa: E402
from robot.sim.teleop_eval import run_episode  # noqa: E402
from robot.sim.xtrainer import MAX_JOINT_STEP, SimXTrainer  # noqa: E402


@pytest.fixture(scope="module")
def easy():
    sim = SimXTrainer("easy", image_size=(48, 64))
    yield sim
    sim.close()


@pytest.fixture(scope="module")
def transfer():
    sim = SimXTrainer("transfer", render=False)
    yield sim
    sim.close()


def test_state_layout_is_14d_and_starts_at_the_start_pose(easy):
    easy.reset(0)
    state = easy.state14()
    assert state.shape == (14,) and state.dtype == np.float32
    np.testing.assert_allclose(state[:6], sim_model.START_ARM_QPOS, atol=0.02)
    np.testing.assert_allclose(state[7:13], sim_model.START_ARM_QPOS, atol=0.02)
    assert state[6] == pytest.approx(0.1, abs=0.01) and state[13] == pytest.approx(0.1, abs=0.01)


def test_reset_is_a_pure_function_of_the_seed(easy):
    easy.reset(5)
    first = (easy.box_pose(), easy.target.copy(), easy.state14())
    easy.reset(6)
    assert not np.allclose(easy.target, first[1])
    easy.reset(5)
    np.testing.assert_array_equal(easy.box_pose(), first[0])
    np.testing.assert_array_equal(easy.target, first[1])
    np.testing.assert_array_equal(easy.state14(), first[2])


def test_three_cameras_render_at_the_configured_size_and_show_the_marker(easy):
    easy.reset(0)
    images = easy.render()
    assert set(images) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
    for img in images.values():
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.std() > 5
    top = images["cam_high"].astype(int)
    green = (top[..., 1] > 150) & (top[..., 0] < 100) & (top[..., 2] < 100)
    assert green.sum() >= 3  # the target marker is visible to the policy


def test_commanded_joint_targets_are_rate_limited(easy):
    easy.reset(0)
    before = easy.command14()
    jump = before.copy()
    jump[0] += 1.0
    easy.step(jump)
    assert easy.command14()[0] - before[0] == pytest.approx(MAX_JOINT_STEP)


def test_cube_off_the_table_is_unrecoverable(transfer):
    transfer.reset(0)
    assert transfer.unrecoverable() is None
    transfer.data.qpos[transfer.box_qadr : transfer.box_qadr + 3] = [0.0, 0.1, -0.5]
    assert "left the table" in transfer.unrecoverable()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scripted_teleoperator_reaches_the_marker_from_reset(easy, seed):
    label, reason, t = run_episode(easy, seed)
    assert label == "success", reason
    assert easy.left_tcp_error() < 0.02


@pytest.mark.parametrize("seed", [0, 7])
def test_scripted_teleoperator_transfers_the_cube_from_reset(transfer, seed):
    label, reason, t = run_episode(transfer, seed)
    assert label == "success", reason
    contacts = transfer.box_contacts()
    assert transfer.box_pose()[2] > 0.08 and contacts["left"] >= 1 and contacts["right"] == 0


def test_takeover_from_a_mid_task_perturbed_state(transfer):
    label, reason, _ = run_episode(transfer, 3, start="mid-task-walk")
    assert label == "success", reason


def test_human_takes_over_a_stalled_policy_and_labels_success(easy):
    easy.reset(2)
    human = ScriptedHuman(easy, HumanConfig(stall_window_s=0.5))
    hold = easy.command14()
    steps = 0
    while not human.teleop:
        easy.step(hold)
        human.after_step()
        steps += 1
    # the human looks at 10 Hz: first look at 0.1 s, then 0.5 s without motion
    assert "stalled" in human.takeover_reason and steps == 30
    while human.label is None:
        easy.step(human.expert_action())
        human.after_step()
    assert human.label == "success" and "scripted teleoperator" in human.label_reason


def test_human_without_takeover_labels_failure_at_the_horizon(easy):
    easy.reset(1)
    human = ScriptedHuman(easy, HumanConfig(takeover=False))
    hold = easy.command14()
    while human.label is None:
        easy.step(hold)
        human.after_step()
    assert human.label == "failure" and "horizon" in human.label_reason and not human.teleop


def test_sim_robot_io_switches_flag_and_ignores_the_policy_during_teleop():
    io = SimRobotIO("easy", image_size=(16, 20), human=HumanConfig(stall_window_s=0.2), render=False)
    assert io.teleop_flag() == teleop.POLICY_TAKES_OVER
    hold = io.read_state()
    for _ in range(20):
        io.command(hold)
        io.tick()
    assert teleop.is_teleop(io.teleop_flag())
    wild = hold + 0.5
    for _ in range(150):
        io.command(wild)  # ignored: the scripted human drives
        io.tick()
    assert io.episode_label()[0] == "success"
    io.close()


def test_invalid_human_config_names_the_field(easy):
    with pytest.raises(ValueError, match="HumanConfig.stall_window_s"):
        ScriptedHuman(easy, HumanConfig(stall_window_s=0))
    with pytest.raises(ValueError, match="unknown sim task"):
        SimXTrainer("insertion", render=False)
