"""--compile and --cudagraphs compute what the plain path computes: with fallback_random, Inductor draws torch's
random numbers, so compiled and eager agree to float rounding. The CUDA tests skip without a CUDA device."""

import copy
import os
import shutil

import pytest
import torch
import torch._inductor.config as inductor_config
from conftest import SMALL, error_line, main_in, make_agent, make_batch, ok

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TOL = dict(rtol=1e-5, atol=1e-6)


def assert_same_agents(a, b, **tol):
    for name in ("actor", "qf1", "qf2", "qf1_target", "qf2_target"):
        for (key, x), y in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().values()):
            torch.testing.assert_close(y, x, **tol, msg=f"{name}.{key}")
    torch.testing.assert_close(b.log_alpha, a.log_alpha, **tol)


def test_compiled_losses_gradients_and_updates_equal_eager():
    """Dynamo captured both losses as whole graphs (a silent fall-back to eager would also agree); their values and
    gradients equal eager's; three full updates from equal states leave equal states."""
    from torch._dynamo.utils import counters

    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("--compile on the CPU needs a C++ compiler")
    with inductor_config.patch(fallback_random=True):
        eager, compiled = make_agent(), make_agent(compile=True)
        obs, act, rew, term, next_obs = (torch.as_tensor(x, dtype=torch.float32) for x in make_batch())
        out = []
        for agent in (eager, compiled):
            torch.manual_seed(7)
            q_loss, stats = agent.critic_loss(obs, act, rew[:, None], term[:, None], next_obs)
            q_params = [*agent.qf1.parameters(), *agent.qf2.parameters()]
            actor_loss, log_pi = agent.actor_loss(obs)
            grads = torch.autograd.grad(q_loss, q_params) + torch.autograd.grad(actor_loss, [*agent.actor.parameters()])
            out.append([q_loss, *stats.values(), actor_loss, log_pi, *grads])
        assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"], dict(counters)
        assert len(out[0]) == len(out[1]) > 20 and any(bool(g.abs().sum() > 0) for g in out[0][-6:])
        for a, b in zip(*out):
            torch.testing.assert_close(b, a, **TOL)
        eager = copy.deepcopy(eager)
        for i in range(3):
            for agent in (eager, compiled):
                torch.manual_seed(100 + i)
                agent.update(make_batch(seed=10 + i))
    assert_same_agents(eager, compiled, **TOL)


@CUDA
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_cuda_graph_updates_equal_eager_updates(compile):
    """Past the warm-up and the capture: replays, with the same CUDA random stream and batches."""
    with inductor_config.patch(fallback_random=True):
        eager, graphed = make_agent("cuda"), make_agent("cuda", cudagraphs=True, compile=compile)
        for agent in (eager, graphed):
            torch.cuda.manual_seed(3)
            agent.losses = [agent.update(make_batch(seed=i)) for i in range(8)]
    for a, b in zip(eager.losses, graphed.losses):
        assert a.keys() == b.keys() and all(b[k].item() == pytest.approx(a[k].item(), rel=1e-4, abs=1e-5) for k in a)
    assert_same_agents(eager, graphed, rtol=1e-4, atol=1e-5)


@CUDA
def test_cuda_run_with_both_fast_paths_checkpoints_and_resumes(tmp_path):
    flags = [*SMALL, "--device", "cuda", "--compile", "--cudagraphs", "--checkpoint-frequency", 100]
    ok(main_in(tmp_path, *flags, "--total-timesteps", 150, "--resume", "auto"))
    assert "at step 150" in ok(main_in(tmp_path, *flags, "--total-timesteps", 250, "--resume", "auto")).err


@CUDA
def test_compile_on_cuda_without_triton_is_refused(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    error_line(main_in(tmp_path, *SMALL, "--device", "cuda", "--compile", "--total-timesteps", 100), "triton")
